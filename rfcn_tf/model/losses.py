"""RPN and R-FCN losses, returned as dicts with fixed names (the train step sums them).

Shape shorthand:
    B  images in the batch
    N  anchors per image
    R  RoIs per image (proposals + appended ground truth)
    C  object classes (without background); class logits have C + 1 columns, 0 = background
    q  box classes of the head's deltas: 1 (class-agnostic, the paper) or C (class-specific)

Normalization: every loss is a sum over the selected (sampled) examples of the whole batch
divided by their number (at least 1), so the value is a per-example mean that does not depend
on the batch size; the train step divides by the number of replicas.
"""

import tensorflow as tf

from rfcn_tf.model.roi_sampling import RoISampler

__all__ = [
    "RFCN_LOSS_NAMES",
    "RPN_LOSS_NAMES",
    "rfcn_losses",
    "rfcn_per_roi_losses",
    "rpn_losses",
    "selected_mean",
    "smooth_l1",
]

RPN_LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss")
RFCN_LOSS_NAMES = ("rfcn_class_loss", "rfcn_box_loss")


def smooth_l1(x, beta=1.0):
    """Elementwise smooth L1 (Fast R-CNN eq. 3, with a transition point `beta`).

    0.5 * x**2 / beta where |x| < beta, |x| - 0.5 * beta elsewhere; beta = 0 gives |x|.
    Faster R-CNN's RPN uses sigma = 3, i.e. beta = 1 / sigma**2 = 1/9; Fast R-CNN / R-FCN
    heads use beta = 1.

    Args:
      x: float tensor of any shape (typically prediction - target).
      beta: float >= 0.

    Returns:
      tensor of x's shape and dtype.
    """
    x = tf.convert_to_tensor(x)
    beta = float(beta)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    ax = tf.abs(x)
    if beta == 0.0:
        return ax
    # tf.where picks branches elementwise; both are finite for finite x, so gradients are too.
    return tf.where(ax < beta, 0.5 * tf.square(x) / beta, ax - 0.5 * beta)


def _normalizer(mask):
    return tf.maximum(tf.reduce_sum(tf.cast(mask, tf.float32)), 1.0)


def rpn_losses(objectness_logits, box_deltas, labels, box_targets, *, beta=1.0 / 9.0):
    """RPN losses (Faster R-CNN sec. 3.1.2, eq. 1).

    Args:
      objectness_logits: [B, N] float raw logits.
      box_deltas: [B, N, 4] float predicted (dy, dx, dh, dw), weights (1, 1, 1, 1).
      labels: [B, N] int {-1 ignore, 0 negative, 1 positive}, after sampling (rpn_targets).
      box_targets: [B, N, 4] float target deltas (zeros except positives).
      beta: smooth-L1 transition point (1/9 as Faster R-CNN).

    Returns:
      {"rpn_objectness_loss": [] float32, sigmoid cross entropy summed over sampled anchors
        (labels >= 0) / number sampled;
       "rpn_box_loss": [] float32, smooth-L1 over the 4 deltas summed over positives /
        number sampled (the paper's N_reg / lambda balance, as detectron2)}.
      Both are 0 when nothing is sampled.
    """
    logits = tf.cast(objectness_logits, tf.float32)
    deltas = tf.cast(box_deltas, tf.float32)
    labels = tf.cast(labels, tf.int32)
    targets = tf.cast(box_targets, tf.float32)
    sampled = labels >= 0
    positive = labels == 1
    norm = _normalizer(sampled)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(positive, tf.float32), logits=logits
    )
    obj_loss = tf.reduce_sum(tf.where(sampled, ce, 0.0)) / norm
    box = tf.reduce_sum(smooth_l1(deltas - targets, beta), axis=-1)  # [B, N]
    box_loss = tf.reduce_sum(tf.where(positive, box, 0.0)) / norm
    return {"rpn_objectness_loss": obj_loss, "rpn_box_loss": box_loss}


def rfcn_per_roi_losses(class_logits, box_deltas, targets, *, beta=1.0, box_loss_weight=1.0):
    """Per-RoI classification and box losses, before selection.

    Args:
      class_logits: [B, R, C + 1] float raw logits.
      box_deltas: [B, R, q, 4] float predicted deltas (box_weights of roi_targets), q = 1
        (class-agnostic) or C (class-specific: the deltas of the RoI's target class are
        regressed, as Fast R-CNN); [B, R, 4] is read as q = 1.
      targets: roi_targets' dict (roi_classes, box_targets, foreground).
      beta: smooth-L1 transition point (1 for the head).
      box_loss_weight: lambda of R-FCN eq. 1 multiplying the box term.

    Returns:
      (class_loss [B, R] float32 softmax cross entropy, box_loss [B, R] float32 lambda *
      smooth-L1 summed over the 4 deltas, 0 for non-foreground RoIs).
    """
    logits = tf.cast(class_logits, tf.float32)
    deltas = tf.cast(box_deltas, tf.float32)
    if deltas.shape.rank == 3:
        deltas = deltas[:, :, None, :]
    classes = tf.cast(targets["roi_classes"], tf.int32)
    foreground = tf.cast(targets["foreground"], tf.bool)
    cls = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)
    if deltas.shape[2] == 1:
        deltas = deltas[:, :, 0, :]
    else:  # class-specific: the target class's deltas (background rows: any, masked below)
        deltas = tf.gather(deltas, tf.maximum(classes - 1, 0), axis=2, batch_dims=2)
    box = tf.reduce_sum(
        smooth_l1(deltas - tf.cast(targets["box_targets"], tf.float32), beta), axis=-1
    )
    box = float(box_loss_weight) * tf.where(foreground, box, 0.0)
    return cls, box


def selected_mean(class_loss, box_loss, selected):
    """`{"rfcn_class_loss", "rfcn_box_loss"}`: the per-RoI losses summed over the `selected`
    [B, R] RoIs of the batch, divided by their number (at least 1)."""
    norm = _normalizer(selected)
    # tf.where (not a multiplication by a 0/1 mask) so non-selected RoIs get exactly zero
    # gradient even if their loss were inf.
    return {
        "rfcn_class_loss": tf.reduce_sum(tf.where(selected, class_loss, 0.0)) / norm,
        "rfcn_box_loss": tf.reduce_sum(tf.where(selected, box_loss, 0.0)) / norm,
    }


def rfcn_losses(
    class_logits,
    box_deltas,
    targets,
    *,
    sampling="ohem",
    batch_size_per_image=128,
    foreground_fraction=0.25,
    ohem_nms_iou=None,
    box_loss_weight=1.0,
    beta=1.0,
    seed=None,
):
    """R-FCN head losses (R-FCN sec. 2, "Training", eq. 1), with OHEM or balanced sampling.

    L(s, t) = L_cls(s_c*) + lambda [c* > 0] L_reg(t, t*), lambda = box_loss_weight.

    sampling="ohem" (the paper): the per-RoI loss L is computed for all valid RoIs; the
    `batch_size_per_image` RoIs with the highest loss per image (roi_sampling.ohem_select on
    tf.stop_gradient(L), optionally after NMS at `ohem_nms_iou` among the RoIs) are the only
    ones that contribute, so the other RoIs' gradients are exactly 0.
    sampling="balanced" (Fast R-CNN): a random sample of `batch_size_per_image` valid RoIs with
    up to `foreground_fraction` foreground.
    Both losses are summed over the selected RoIs of the batch and divided by their number.
    (The detector does the same through `RoISampler.select` and `selected_mean`.)

    Args:
      class_logits: [B, R, C + 1] float raw logits.
      box_deltas: [B, R, q, 4] (or [B, R, 4]) float predicted deltas.
      targets: roi_targets' dict: rois [B, R, 4], roi_valid, roi_classes, box_targets,
        foreground.
      sampling: "ohem" or "balanced".
      batch_size_per_image: RoIs selected per image (128).
      foreground_fraction: largest foreground share for "balanced" (0.25).
      ohem_nms_iou: None or IoU for NMS before OHEM selection.
      box_loss_weight: lambda (1).
      beta: smooth-L1 transition point (1).
      seed: for "balanced": None, int or [2] int tensor (see sample_balanced).

    Returns:
      {"rfcn_class_loss": [] float32, "rfcn_box_loss": [] float32 (already times lambda)};
      only these two keys, so a caller may sum the dict's values. Both are 0 when no RoI is
      valid.
    """
    if sampling not in ("ohem", "balanced"):
        raise ValueError(f"sampling must be 'ohem' or 'balanced', got {sampling!r}")
    sampler = RoISampler(
        {
            "sampling": sampling,
            "batch_size_per_image": batch_size_per_image,
            "foreground_fraction": foreground_fraction,
            "ohem_nms_iou": ohem_nms_iou,
        }
    )
    cls, box = rfcn_per_roi_losses(
        class_logits, box_deltas, targets, beta=beta, box_loss_weight=box_loss_weight
    )
    return selected_mean(cls, box, sampler.select(cls + box, targets, seed=seed))
