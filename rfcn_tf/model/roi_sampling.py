"""Which RoIs train the R-FCN head: RoI targets, online hard example mining, balanced sampling.

R-FCN sec. 2 ("Training"): "we adopt online hard example mining (OHEM) [Shrivastava et al.
2016] ... Assuming N proposals per image, in the forward pass we evaluate the loss of all N
proposals. Then we sort all RoIs (positive and negative) by loss and select B RoIs that have
the highest loss. Backpropagation is performed based on the selected examples." Because the
R-FCN head has almost no per-RoI computation, evaluating all N RoIs is nearly free, which is
what makes OHEM cheap here. The alternative is Fast R-CNN's balanced random sample.

`RoISampler`, configured by `model.roi` (`RoIConfig`), owns both halves: `targets` labels the
RoIs (ground truth appended, foreground/background IoUs) and `select` picks the RoIs that
contribute to the loss, OHEM (`ohem_select`) or balanced (`sampler.sample_balanced`).

Shape shorthand:
    B  images in the batch
    P  proposals per image (static, padded)
    G  padded ground-truth boxes per image (`data.max_boxes`)
    R  RoIs per image = P + G (proposals with the ground truth appended)
    C  object classes (1..C), 0 is background

Naming convention:
    gt_*          padded ground truth: boxes yxyx pixels (padding rows -1), classes 1..C
                  (padding -1), gt_mask True for real rows
    box_targets   (dy, dx, dh, dw) encoded with ops.box_coder and the head's box_weights,
                  zeros where not foreground
"""

import numpy as np
import tensorflow as tf

from rfcn_tf.model.matcher import Matcher
from rfcn_tf.model.proposals import nms_padded
from rfcn_tf.model.sampler import mask_from_top_k, sample_balanced
from rfcn_tf.model.sections import ROI_SAMPLINGS, RoIConfig, as_section
from rfcn_tf.ops import boxes as box_ops
from rfcn_tf.ops.box_coder import encode_boxes

__all__ = ["RoISampler", "ohem_select", "roi_targets"]


class RoISampler:
    """RoI labels and the per-image selection of the RoIs that train the head.

    Args:
      config: `RoIConfig` (or its dict): IoU thresholds, `sampling` ("ohem" | "balanced"),
        `batch_size_per_image`, `foreground_fraction`, `ohem_nms_iou`. Copied.

    Example:
      >>> sampler = RoISampler(RoIConfig(sampling="ohem", batch_size_per_image=128))
      >>> targets = sampler.targets(proposals, num_proposals, gt_boxes, gt_classes, gt_mask,
      ...                           box_weights=(10., 10., 5., 5.))
      >>> selected = sampler.select(per_roi_loss, targets)  # [B, R] bool
    """

    def __init__(self, config=None):
        self.config = as_section(RoIConfig, config)
        if self.config.sampling not in ROI_SAMPLINGS:
            raise ValueError(
                f"roi sampling must be one of {ROI_SAMPLINGS}, got {self.config.sampling!r}"
            )

    def targets(self, proposals, num_proposals, gt_boxes, gt_classes, gt_mask, *, box_weights):
        """`roi_targets` with this config's IoU thresholds (see there)."""
        return roi_targets(
            proposals,
            num_proposals,
            gt_boxes,
            gt_classes,
            gt_mask,
            foreground_iou=self.config.foreground_iou,
            background_iou_low=self.config.background_iou_low,
            box_weights=box_weights,
        )

    def select(self, per_roi_loss, targets, *, seed=None):
        """[B, R] bool, stop_gradient-ed: the RoIs whose losses train the head.

        Args:
          per_roi_loss: [B, R] float, each RoI's loss (class + box), used by OHEM only (its
            gradient is stopped here).
          targets: `targets`' dict (roi_valid, foreground, rois).
          seed: balanced sampling only: None, an int or a [2] int tensor (sample_balanced).
        """
        cfg = self.config
        valid = tf.cast(targets["roi_valid"], tf.bool)
        if cfg.sampling == "ohem":
            with_nms = cfg.ohem_nms_iou is not None
            selected = ohem_select(
                tf.stop_gradient(per_roi_loss),
                valid,
                num_selected=cfg.batch_size_per_image,
                boxes=targets.get("rois") if with_nms else None,
                nms_iou=cfg.ohem_nms_iou,
            )
        else:
            labels = tf.where(valid, tf.cast(targets["foreground"], tf.int32), -1)
            selected = sample_balanced(
                labels,
                batch_size_per_image=cfg.batch_size_per_image,
                positive_fraction=cfg.foreground_fraction,
                seed=seed,
            )
        return tf.stop_gradient(selected & valid)


def ohem_select(losses, valid, *, num_selected, boxes=None, nms_iou=None):
    """Online hard example mining (R-FCN sec. 2, "Training"; Shrivastava et al. 2016, sec. 4).

    Per image, the `num_selected` valid RoIs with the highest loss. With `nms_iou`, hard RoIs
    are first de-duplicated by NMS among the RoIs with the loss as the score (Shrivastava et
    al. use 0.7; R-FCN does not), then the highest-loss survivors are taken. Ties go to the
    lower index (top_k and NMS both keep the lower index first), so the result is
    deterministic.

    Args:
      losses: [B, R] float, per-RoI losses (pass them through tf.stop_gradient).
      valid: [B, R] bool, RoIs that may be selected.
      num_selected: Python int, RoIs per image (R-FCN: 128).
      boxes: [B, R, 4] yxyx RoIs, needed with nms_iou.
      nms_iou: None (no NMS) or the NMS IoU threshold.

    Returns:
      selected: [B, R] bool with min(num_selected, #valid (after NMS)) True entries per image.
    """
    num_selected = int(num_selected)
    if num_selected <= 0:
        raise ValueError(f"num_selected must be positive, got {num_selected}")
    losses = tf.cast(losses, tf.float32)
    valid = tf.cast(valid, tf.bool)
    if losses.shape.rank != 2:
        raise ValueError(f"losses must be [B, R], got shape {losses.shape}")
    keys = tf.where(valid, losses, -np.inf)
    count = tf.fill(tf.shape(keys)[:1], num_selected)
    if nms_iou is None:
        return mask_from_top_k(keys, num_selected, count)
    if boxes is None:
        raise ValueError(f"ohem_select with nms_iou={nms_iou} needs boxes [B, R, 4]")
    boxes = tf.cast(boxes, tf.float32)
    r = tf.shape(keys)[1]

    def _one_image(args):
        b, s = args
        idx, n = nms_padded(b, s, max_output_size=num_selected, iou_threshold=nms_iou)
        take = tf.range(num_selected) < n
        return tf.scatter_nd(idx[:, None], tf.cast(take, tf.int32), [r]) > 0

    selected = tf.map_fn(
        _one_image, (boxes, keys), fn_output_signature=tf.TensorSpec([None], tf.bool)
    )
    selected.set_shape(keys.shape)
    return selected


def roi_targets(
    proposals,
    num_proposals,
    gt_boxes,
    gt_classes,
    gt_mask,
    *,
    foreground_iou=0.5,
    background_iou_low=0.0,
    box_weights=(10.0, 10.0, 5.0, 5.0),
):
    """Class and box targets of the R-FCN head's RoIs (R-FCN sec. 2, "Training").

    The ground-truth boxes are appended to the proposals (Fast R-CNN / R-FCN convention), so
    every object has at least one perfect RoI. A RoI is foreground if its IoU with some
    ground truth is >= foreground_iou (0.5), background if the IoU is in
    [background_iou_low, foreground_iou); below background_iou_low (Fast R-CNN used 0.1) it is
    not used. An image without ground truth is valid: all its proposals are background.
    Padded proposal rows (index >= num_proposals) and padded gt rows are invalid; their RoI
    rows are set to zeros. No sampling happens here: rfcn_losses selects RoIs (OHEM or
    balanced) among the valid ones.

    Args:
      proposals: [B, P, 4] float32 yxyx pixels (generate_proposals' output).
      num_proposals: [B] int32, real rows of proposals.
      gt_boxes: [B, G, 4] float32 yxyx pixels.
      gt_classes: [B, G] int32 in 1..C (padding arbitrary).
      gt_mask: [B, G] bool.
      foreground_iou: IoU at or above which a RoI is foreground.
      background_iou_low: lowest IoU of a background RoI.
      box_weights: (wy, wx, wh, ww) of the box coder for the head's deltas.

    Returns:
      dict with (R = P + G)
        rois: [B, R, 4] float32 yxyx pixels, zeros on invalid rows.
        roi_valid: [B, R] bool, RoIs that take part in the loss (real and foreground or
          background).
        roi_classes: [B, R] int32, the matched class 1..C for foreground, 0 otherwise.
        box_targets: [B, R, 4] float32 deltas (box_weights) to the matched ground truth,
          zeros where not foreground.
        foreground: [B, R] bool.
        matched_iou: [B, R] float32 best IoU with real ground truth (0 without any).
        matched_gt_index: [B, R] int32 index into G.
    """
    proposals = tf.cast(proposals, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_mask = tf.cast(gt_mask, tf.bool)
    gt_classes = tf.cast(gt_classes, tf.int32)
    p = tf.shape(proposals)[1]
    proposal_valid = tf.range(p)[None, :] < tf.cast(num_proposals, tf.int32)[:, None]  # [B, P]
    real = tf.concat([proposal_valid, gt_mask], axis=1)  # [B, R]
    rois = tf.concat([proposals, gt_boxes], axis=1)
    rois = tf.where(real[:, :, None], rois, 0.0)

    overlaps = box_ops.iou(rois, gt_boxes)  # [B, R, G]
    matcher = Matcher(
        thresholds=(background_iou_low, foreground_iou),
        labels=(-1, 0, 1),
        allow_low_quality_matches=False,
    )
    matched, labels = matcher(overlaps, gt_mask)
    masked = tf.where(gt_mask[:, None, :], overlaps, 0.0)
    matched_iou = tf.reduce_max(tf.concat([masked, tf.zeros_like(masked[:, :, :1])], -1), -1)

    foreground = real & (labels == 1)
    valid = real & (labels >= 0)
    classes = tf.where(foreground, tf.gather(gt_classes, matched, batch_dims=1), 0)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    deltas = encode_boxes(matched_boxes, rois, box_weights)
    deltas = tf.where(foreground[:, :, None], deltas, 0.0)
    return {
        "rois": tf.stop_gradient(rois),
        "roi_valid": valid,
        "roi_classes": tf.stop_gradient(classes),
        "box_targets": tf.stop_gradient(deltas),
        "foreground": foreground,
        "matched_iou": tf.stop_gradient(matched_iou),
        "matched_gt_index": tf.stop_gradient(matched),
    }
