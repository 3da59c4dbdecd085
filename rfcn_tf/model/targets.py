"""Training targets of the RPN: anchor labels and box targets (the RoI targets of the head are
in roi_sampling.py).

Shape shorthand:
    B  images in the batch
    N  anchors (h * w * A), shared by the batch
    G  padded ground-truth boxes per image (`data.max_boxes`)
    P  proposals per image (static, padded)
    R  RoIs per image = P + G (proposals with the ground truth appended)

Naming convention:
    gt_*          padded ground truth: boxes yxyx pixels (padding rows -1), classes 1..C
                  (padding -1), gt_mask True for real rows
    labels        int32 {-1 ignore, 0 negative/background, 1 positive/foreground}
    box_targets   (dy, dx, dh, dw) encoded with ops.box_coder, zeros where not positive
"""

import tensorflow as tf

from rfcn_tf.model.matcher import Matcher
from rfcn_tf.model.sampler import sample_balanced
from rfcn_tf.ops import boxes as box_ops
from rfcn_tf.ops.box_coder import encode_boxes

__all__ = ["anchor_validity", "rpn_targets"]


def anchor_validity(anchors, image_shapes, *, allowed_border=None):
    """Anchors that may be labelled, per image.

    An anchor is usable when its centre lies inside the real (unpadded) image, i.e.
    0 <= y_c < height and 0 <= x_c < width: anchors whose centres sit in the zero padding of a
    batched image describe no image content. With `allowed_border` (pixels) an anchor must
    also lie inside the image up to that margin: y1 >= -b, x1 >= -b, y2 <= height + b,
    x2 <= width + b (Faster R-CNN sec. 3.3 ignores cross-boundary anchors in training, b = 0).

    Args:
      anchors: [N, 4] float32 yxyx pixels.
      image_shapes: [B, 2] (height, width) before padding.
      allowed_border: None (keep anchors crossing the border) or a margin in pixels >= 0.

    Returns:
      [B, N] bool.
    """
    anchors = tf.cast(anchors, tf.float32)
    shapes = tf.cast(image_shapes, tf.float32)
    h, w = shapes[:, 0:1], shapes[:, 1:2]  # [B, 1]
    y1, x1, y2, x2 = [t[None, :] for t in tf.unstack(anchors, 4, axis=-1)]  # [1, N]
    yc, xc = 0.5 * (y1 + y2), 0.5 * (x1 + x2)
    ok = (yc >= 0.0) & (yc < h) & (xc >= 0.0) & (xc < w)
    if allowed_border is not None:
        b = float(allowed_border)
        if b < 0:
            raise ValueError(f"allowed_border must be None or >= 0, got {allowed_border}")
        ok &= (y1 >= -b) & (x1 >= -b) & (y2 <= h + b) & (x2 <= w + b)
    return ok


def rpn_targets(
    anchors,
    gt_boxes,
    gt_mask,
    image_shapes,
    *,
    positive_iou=0.7,
    negative_iou=0.3,
    batch_size_per_image=256,
    positive_fraction=0.5,
    allowed_border=None,
    seed=None,
):
    """Anchor labels and regression targets for the RPN (Faster R-CNN sec. 3.1.2 and 3.1.3).

    Labels: positive if IoU >= positive_iou with some ground truth, or if it is (one of) the
    anchor(s) with the highest IoU for some ground truth; negative if IoU < negative_iou with
    all ground truth; otherwise ignored. Unusable anchors (see `anchor_validity`) are ignored
    and take no part in the best-anchor rule. Then `batch_size_per_image` anchors per image are
    sampled with up to `positive_fraction` positives; unsampled anchors become -1. An image
    without ground truth gets only negatives.

    `allowed_border`: the paper ignores anchors that cross the image boundary (b = 0). With
    small images (a 256-pixel image and 512-pixel anchors) almost every large anchor crosses
    it, so None (keep all, detectron2's default) suits small inputs; the builder chooses.

    Args:
      anchors: [N, 4] float32 yxyx pixels.
      gt_boxes: [B, G, 4] float32 yxyx pixels; padding rows arbitrary (masked).
      gt_mask: [B, G] bool.
      image_shapes: [B, 2] (height, width) before padding.
      positive_iou, negative_iou: the IoU thresholds (0.7, 0.3).
      batch_size_per_image: anchors sampled per image (256).
      positive_fraction: largest share of positives in the sample (0.5).
      allowed_border: None or pixels, see above.
      seed: None, int or [2] int tensor, see sampler.sample_balanced.

    Returns:
      dict with
        labels: [B, N] int32 {-1, 0, 1} after sampling (what the loss uses).
        box_targets: [B, N, 4] float32 deltas (weights 1) to the matched ground truth, zeros
          where labels != 1.
        matched_gt_index: [B, N] int32 index into G of each anchor's best ground truth.
        matched_labels: [B, N] int32 {-1, 0, 1} before sampling.
    """
    anchors = tf.cast(anchors, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_mask = tf.cast(gt_mask, tf.bool)
    usable = anchor_validity(anchors, image_shapes, allowed_border=allowed_border)  # [B, N]
    overlaps = box_ops.iou(anchors[None], gt_boxes)  # [B, N, G]
    # Unusable anchors get IoU 0: they are neither matched nor a ground truth's best anchor.
    overlaps = tf.where(usable[:, :, None], overlaps, 0.0)
    matcher = Matcher(
        thresholds=(negative_iou, positive_iou), labels=(0, -1, 1), allow_low_quality_matches=True
    )
    matched, labels = matcher(overlaps, gt_mask)
    labels = tf.where(usable, labels, -1)
    sampled = sample_balanced(
        labels,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        seed=seed,
    )
    sampled_labels = tf.where(sampled, labels, -1)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)  # [B, N, 4]
    targets = encode_boxes(matched_boxes, anchors[None])
    targets = tf.where((sampled_labels == 1)[:, :, None], targets, 0.0)
    return {
        "labels": tf.stop_gradient(sampled_labels),
        "box_targets": tf.stop_gradient(targets),
        "matched_gt_index": tf.stop_gradient(matched),
        "matched_labels": tf.stop_gradient(labels),
    }
