"""RPN proposal generation: decode, clip, filter, top-N, NMS, pad (Faster R-CNN sec. 3.1, 3.3).

Shape shorthand:
    B  images in the batch
    N  anchors (h * w * A), the same grid for every image of the batch
    K  boxes kept before NMS: min(pre_nms_top_n, N)
    P  proposals per image after NMS: post_nms_top_n (static)

Naming convention:
    *_logits   raw head outputs (objectness: sigmoid logit, > 0 means object)
    *_deltas   (dy, dx, dh, dw) relative to anchors, RPN weights (1, 1, 1, 1)
    boxes      yxyx float32 pixels of the resized input image
"""

import numpy as np
import tensorflow as tf

from rfcn_tf.ops import boxes as box_ops
from rfcn_tf.ops.box_coder import decode_boxes

__all__ = ["MASKED_SCORE", "generate_proposals", "nms_padded"]

_LOWEST = float(np.finfo(np.float32).min)
# Score given to dropped boxes. Finite on purpose: tf2onnx lowers tf.where to arithmetic in
# places (cond * x + (1 - cond) * y), where -inf turns every score into NaN in onnxruntime.
MASKED_SCORE = _LOWEST


def nms_padded(boxes, scores, *, max_output_size, iou_threshold):
    """Greedy NMS of one image, padded to a fixed size.

    Args:
      boxes: [K, 4] float32 yxyx.
      scores: [K] float32; a box scored at or below float32's lowest finite value (e.g. -inf,
        or MASKED_SCORE) is never selected.
      max_output_size: Python int, the static number of output slots M.
      iou_threshold: boxes overlapping a kept, higher-scored box by IoU > this are dropped.

    Returns:
      (indices [M] int32 into boxes, padding rows 0; count [] int32, the valid prefix length).
      Selected indices are in decreasing score order (ties: lower index first).
    """
    # NonMaxSuppressionV4 keeps scores strictly above score_threshold, so MASKED_SCORE and -inf
    # rows are dropped and every other finite score survives; pad_to_max_output_size gives the static [M] shape.
    indices, count = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes,
        scores=scores,
        max_output_size=max_output_size,
        iou_threshold=tf.cast(iou_threshold, tf.float32),
        score_threshold=tf.constant(_LOWEST, tf.float32),
        pad_to_max_output_size=True,
    )
    indices = tf.ensure_shape(indices, [max_output_size])
    return indices, count


def generate_proposals(
    objectness_logits,
    box_deltas,
    anchors,
    image_shapes,
    *,
    pre_nms_top_n,
    post_nms_top_n,
    nms_iou=0.7,
    min_size=0.0,
):
    """Turn RPN outputs into a fixed number of proposals per image.

    Per image (Faster R-CNN sec. 3.3): decode every anchor's deltas (weights 1), clip the boxes
    to the image's real (unpadded) size, drop boxes smaller than `min_size` (and degenerate
    ones, e.g. those of anchors lying in the zero padding) by giving them the lowest score, keep the
    `pre_nms_top_n` highest objectness logits, run NMS at `nms_iou`, keep the first
    `post_nms_top_n` survivors (decreasing score) and pad with zeros.

    Args:
      objectness_logits: [B, N] float, raw objectness logits (cast to float32).
      box_deltas: [B, N, 4] float, raw (dy, dx, dh, dw).
      anchors: [N, 4] float32 yxyx pixels (AnchorGenerator order).
      image_shapes: [B, 2] int or float, (height, width) of each image before padding.
      pre_nms_top_n: Python int, boxes kept per image before NMS (Faster R-CNN: 12000 train,
        6000 test).
      post_nms_top_n: Python int, P, proposals returned per image (2000 train, 300 test).
      nms_iou: NMS IoU threshold (0.7 in the paper).
      min_size: minimum proposal height and width in pixels of the resized image.

    Returns:
      proposals: [B, P, 4] float32 yxyx pixels, clipped to the image; rows >= num_proposals
        are zeros.
      scores: [B, P] float32 objectness probabilities sigmoid(logit); padding rows 0.
      num_proposals: [B] int32, the number of real rows (<= P; smaller when fewer boxes
        survive the size filter and NMS).
      All three are wrapped in tf.stop_gradient (see below).
    """
    pre_nms_top_n = int(pre_nms_top_n)
    post_nms_top_n = int(post_nms_top_n)
    if pre_nms_top_n <= 0 or post_nms_top_n <= 0:
        raise ValueError(
            f"pre_nms_top_n and post_nms_top_n must be positive, got "
            f"{pre_nms_top_n} and {post_nms_top_n}"
        )
    logits = tf.cast(objectness_logits, tf.float32)
    deltas = tf.cast(box_deltas, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    if logits.shape.rank != 2:
        raise ValueError(f"objectness_logits must be [B, N], got {logits.shape}")
    if deltas.shape.rank != 3:
        raise ValueError(f"box_deltas must be [B, N, 4], got {deltas.shape}")

    boxes = decode_boxes(deltas, anchors[None])  # [B, N, 4]
    boxes = box_ops.clip_boxes(boxes, image_shapes)
    keep = box_ops.filter_small_boxes(boxes, min_size)  # [B, N]
    logits = tf.where(keep, logits, tf.fill(tf.shape(logits), MASKED_SCORE))

    k = tf.minimum(tf.shape(logits)[1], pre_nms_top_n)
    top_logits, top_idx = tf.math.top_k(logits, k=k)  # [B, K]
    top_boxes = tf.gather(boxes, top_idx, batch_dims=1)  # [B, K, 4]

    def _one_image(args):
        b, s = args
        idx, count = nms_padded(b, s, max_output_size=post_nms_top_n, iou_threshold=nms_iou)
        valid = tf.range(post_nms_top_n) < count
        sel_boxes = tf.where(valid[:, None], tf.gather(b, idx), 0.0)
        sel_scores = tf.where(valid, tf.sigmoid(tf.gather(s, idx)), 0.0)
        return sel_boxes, sel_scores, count

    proposals, scores, num = tf.map_fn(
        _one_image,
        (top_boxes, top_logits),
        fn_output_signature=(
            tf.TensorSpec([post_nms_top_n, 4], tf.float32),
            tf.TensorSpec([post_nms_top_n], tf.float32),
            tf.TensorSpec([], tf.int32),
        ),
    )
    # Approximate joint training (Faster R-CNN sec. 3.2): proposals are treated as fixed inputs
    # of the R-FCN head, so no gradient flows back through box decoding, top-k or NMS.
    return (
        tf.stop_gradient(proposals),
        tf.stop_gradient(scores),
        tf.stop_gradient(tf.cast(num, tf.int32)),
    )
