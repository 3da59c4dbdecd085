"""Detections from the R-FCN head's outputs: decode, clip, per-class NMS, top-M, pad.

Shape shorthand:
    B  images in the batch
    R  RoIs per image (proposals at test time)
    C  object classes; class probabilities have C + 1 columns, column 0 = background
    M  max_detections per image (static)
    q  box classes of the deltas: 1 (class-agnostic) or C (class-specific)

Conventions: boxes are yxyx float32 pixels of the resized input image; the paper's R-FCN box
branch is class-agnostic (R-FCN sec. 2, "Backbone architecture": 4k^2-d box maps), so each RoI
has one decoded box scored for every class (q = 1); with class-specific boxes (q = C) class c is
scored on the RoI's own box for c. Detection classes are 1..C (TF Object Detection API), 0 on
padding rows. `PostProcessor` applies `model.postprocess` (`PostprocessConfig`).
"""

import tensorflow as tf

from rfcn_tf.model.sections import PostprocessConfig, as_section
from rfcn_tf.ops import boxes as box_ops
from rfcn_tf.ops.box_coder import decode_boxes

__all__ = ["PostProcessor", "decode_roi_boxes", "postprocess_detections", "raw_detections"]


class PostProcessor:
    """Detections of scored RoIs with one `PostprocessConfig` (score threshold, NMS, M).

    Args:
      config: `PostprocessConfig` (or its dict). Copied.
      box_weights: the box coder of the head's deltas (`HeadConfig.box_weights`).

    Call: as `postprocess_detections` without its keyword arguments.
    """

    def __init__(self, config=None, *, box_weights=(10.0, 10.0, 5.0, 5.0)):
        self.config = as_section(PostprocessConfig, config)
        self.box_weights = [float(v) for v in box_weights]

    def __call__(self, rois, class_probs, box_deltas, image_shapes, roi_valid):
        cfg = self.config
        return postprocess_detections(
            rois,
            class_probs,
            box_deltas,
            image_shapes,
            roi_valid,
            box_weights=self.box_weights,
            score_threshold=cfg.score_threshold,
            nms_iou=cfg.nms_iou,
            max_detections=cfg.max_detections,
            max_detections_per_class=cfg.max_detections,
        )


def decode_roi_boxes(rois, box_deltas, image_shapes, box_weights):
    """[B, R, q, 4] float32 boxes: `box_deltas` ([B, R, q, 4], or [B, R, 4] as q = 1) decoded
    against the RoIs ([B, R, 4]) with `box_weights`, clipped to `image_shapes` ([B, 2])."""
    rois = tf.cast(rois, tf.float32)
    deltas = tf.cast(box_deltas, tf.float32)
    if deltas.shape.rank == 3:
        deltas = deltas[:, :, None, :]
    boxes = decode_boxes(deltas, rois[:, :, None, :], box_weights)  # [B, R, q, 4]
    shape = tf.shape(boxes)
    clipped = box_ops.clip_boxes(tf.reshape(boxes, [shape[0], -1, 4]), image_shapes)
    return tf.reshape(clipped, shape)


def postprocess_detections(
    rois,
    class_probs,
    box_deltas,
    image_shapes,
    roi_valid,
    *,
    box_weights=(10.0, 10.0, 5.0, 5.0),
    score_threshold=0.05,
    nms_iou=0.3,
    max_detections=100,
    max_detections_per_class=100,
):
    """Final detections per image (R-FCN sec. 3: per-class NMS at IoU 0.3 on the boxes).

    For every valid RoI and every class c in 1..C: box = decode(box_deltas[q = 1 ? 0 : c - 1],
    roi, box_weights) clipped to the image, score = class_probs[..., c]. Candidates with score > score_threshold
    go through per-class NMS at nms_iou keeping at most max_detections_per_class per class;
    the max_detections highest-scoring survivors of all classes are returned (decreasing
    score), padded with zeros. One RoI may yield several detections of different classes, and
    overlapping boxes of different classes never suppress each other. Invalid RoIs never
    produce detections.

    Implementation: tf.image.combined_non_max_suppression with one box per row (class-specific
    boxes become C rows per RoI, each scored in its own class column); checked to convert with
    tf2onnx (opset 17) and to run in onnxruntime.

    Args:
      rois: [B, R, 4] float yxyx pixels, the RoIs the head scored.
      class_probs: [B, R, C + 1] float softmax probabilities (column 0 background).
      box_deltas: [B, R, q, 4] float (dy, dx, dh, dw) encoded with box_weights, q = 1
        (class-agnostic; [B, R, 4] is read as q = 1) or C (class-specific).
      image_shapes: [B, 2] (height, width) before padding; boxes are clipped to it.
      roi_valid: [B, R] bool mask of real RoIs, or [B] int counts (the first count[b] rows
        of image b are real, e.g. generate_proposals' num_proposals).
      box_weights: (wy, wx, wh, ww) used to encode the head's box targets.
      score_threshold: float >= 0, candidates need a score strictly above it.
      nms_iou: per-class NMS IoU threshold (0.3 in the paper).
      max_detections: M, Python int.
      max_detections_per_class: Python int.

    Returns:
      {"detection_boxes": [B, M, 4] float32 yxyx pixels,
       "detection_scores": [B, M] float32,
       "detection_classes": [B, M] int32 in 1..C,
       "num_detections": [B] int32}; rows >= num_detections are zeros.
    """
    if not tf.is_tensor(score_threshold) and score_threshold < 0:  # tensors: serving_custom
        raise ValueError(
            f"score_threshold must be >= 0 (invalid RoIs are scored 0), got {score_threshold}"
        )
    max_detections = int(max_detections)
    max_detections_per_class = int(max_detections_per_class)
    if max_detections <= 0 or max_detections_per_class <= 0:
        raise ValueError(
            f"max_detections and max_detections_per_class must be positive, got "
            f"{max_detections} and {max_detections_per_class}"
        )
    rois = tf.cast(rois, tf.float32)
    probs = tf.cast(class_probs, tf.float32)
    deltas = tf.cast(box_deltas, tf.float32)
    if probs.shape.rank != 3:
        raise ValueError(f"class_probs must be [B, R, C + 1], got {probs.shape}")
    roi_valid = tf.convert_to_tensor(roi_valid)
    if roi_valid.shape.rank == 1:
        r = tf.shape(rois)[1]
        roi_valid = tf.range(r)[None, :] < tf.cast(roi_valid, tf.int32)[:, None]
    elif roi_valid.shape.rank == 2:
        roi_valid = tf.cast(roi_valid, tf.bool)
    else:
        raise ValueError(f"roi_valid must be [B, R] bool or [B] counts, got {roi_valid.shape}")

    boxes = decode_roi_boxes(rois, deltas, image_shapes, box_weights)  # [B, R, q, 4]
    scores = tf.where(roi_valid[:, :, None], probs[:, :, 1:], 0.0)  # [B, R, C]
    if boxes.shape[2] != 1:
        # Class-specific boxes as q = 1: row r*C + c holds class c's box of RoI r, scored in
        # column c only. Per-class NMS sees exactly the same candidates, and tf2onnx converts
        # CombinedNonMaxSuppression only with one box per row.
        batch, num_classes = tf.shape(boxes)[0], tf.shape(scores)[2]
        boxes = tf.reshape(boxes, [batch, -1, 1, 4])  # [B, R*C, 1, 4]
        one_class = tf.eye(num_classes, dtype=scores.dtype)[None, None]  # [1, 1, C, C]
        scores = tf.reshape(scores[:, :, :, None] * one_class, [batch, -1, num_classes])
    nmsed = tf.image.combined_non_max_suppression(
        boxes,
        scores,
        max_output_size_per_class=max_detections_per_class,
        max_total_size=max_detections,
        iou_threshold=nms_iou,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )  # boxes are pixels, already clipped; True would clip to [0, 1]
    num = tf.cast(nmsed.valid_detections, tf.int32)
    valid = tf.range(max_detections)[None, :] < num[:, None]
    classes = tf.where(valid, tf.cast(nmsed.nmsed_classes, tf.int32) + 1, 0)
    return {
        "detection_boxes": tf.where(valid[:, :, None], nmsed.nmsed_boxes, 0.0),
        "detection_scores": tf.where(valid, nmsed.nmsed_scores, 0.0),
        "detection_classes": classes,
        "num_detections": num,
    }


# ------------------------------------------------------------------------------------------
# Before NMS (the export's raw_detection_* outputs, TF Object Detection API semantics)


def raw_detections(
    rois, class_probs, box_deltas, image_shapes, roi_valid, *, box_weights=(10.0, 10.0, 5.0, 5.0)
):
    """Every RoI's box and class probabilities before NMS, as `postprocess_detections` sees
    them: the decoded box clipped to the image and the softmax over background and C classes.

    Args: as `postprocess_detections` (`roi_valid` [B, R] bool or [B] counts).

    Returns:
      `(boxes float32 [B, R, 4] yxyx pixels, probs float32 [B, R, C + 1])`; both zero on
      invalid RoIs. With class-specific deltas (q = C) a RoI's box is the one of its
      highest-scoring object class.
    """
    rois = tf.cast(rois, tf.float32)
    roi_valid = tf.convert_to_tensor(roi_valid)
    if roi_valid.shape.rank == 1:
        roi_valid = tf.range(tf.shape(rois)[1])[None, :] < tf.cast(roi_valid, tf.int32)[:, None]
    valid = tf.cast(roi_valid, tf.bool)[:, :, None]
    boxes = decode_roi_boxes(rois, box_deltas, image_shapes, box_weights)  # [B, R, q, 4]
    if boxes.shape[2] == 1:
        boxes = boxes[:, :, 0, :]
    else:
        best = tf.argmax(tf.cast(class_probs, tf.float32)[:, :, 1:], axis=-1, output_type=tf.int32)
        boxes = tf.gather(boxes, best, axis=2, batch_dims=2)
    return (tf.where(valid, boxes, 0.0), tf.where(valid, tf.cast(class_probs, tf.float32), 0.0))
