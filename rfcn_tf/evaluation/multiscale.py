"""Multi-scale testing: one detector run per test scale, detections merged by per-class NMS.

R-FCN sec. 4.2 (MS COCO): "for testing, we use a single-scale or multi-scale setting with
shorter sides of {200, 400, 600, 800, 1000}" and the results of the scales are combined; we
merge them the way single-scale inference merges classes: per-class NMS (IoU `nms_iou`, 0.3 as
R-FCN sec. 3) over the union of all scales' detections, then the `max_detections` best.

Shape shorthand:
    B   images per batch                 M   max_detections per image (output)
    Hp, Wp  padded input batch size      (h, w) = image_shapes: the input images' real size
    (h_s, w_s)  an image resized for scale s

Frames: the wrapper receives the evaluation batch (images already resized by the data pipeline
to (h, w) and zero-padded) and returns boxes in THAT frame (pixels of the (h, w) image), exactly
like a single-scale `detect`, so the evaluator's conversion to original pixels is unchanged.
Each scale runs THE inference path on the real (h, w) region (`rfcn_tf.inference.preprocess`:
`preprocess` resizes it, shorter side s, longer side <= max_size, and pads it to the stride;
`boxes_to_original` maps the boxes back to (h, w)), so resizing starts from the pipeline's
image: feed the pipeline images at least as large as the largest test scale (the evaluate CLI
sets the data scale to max(sizes)) to avoid upsampling an already downsampled image.

Naming convention: `detections` dicts use docs/INTERFACES.md's keys (`detection_boxes` yxyx
pixels, `detection_scores`, `detection_classes` 1..C, `num_detections`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from rfcn_tf.inference.preprocess import boxes_to_original, preprocess

__all__ = [
    "configure_multiscale_input",
    "merge_detections",
    "multiscale_detect_fn",
    "multiscale_detect_fn_from_config",
]


def merge_detections(
    boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, *, nms_iou: float, max_detections: int
) -> dict[str, tf.Tensor]:
    """Per-class NMS over one image's pooled detections, the best `max_detections` kept.

    Boxes of different classes never suppress each other (as in `model/postprocess.py`).

    Args:
        boxes: float32 `[K, 4]` yxyx pixels (any one frame). scores: float32 `[K]`.
        classes: int32 `[K]` in 1..C. K may be 0.
        nms_iou: IoU above which a lower-scoring box of the same class is suppressed.
        max_detections: M, Python int.

    Returns:
        dict of one image: `detection_boxes` float32 `[M, 4]`, `detection_scores` `[M]`,
        `detection_classes` int32 `[M]`, `num_detections` int32 `[]`, by decreasing score;
        rows from `num_detections` on are zero.
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    scores = tf.reshape(tf.cast(scores, tf.float32), [-1])
    classes = tf.reshape(tf.cast(classes, tf.int32), [-1])
    kept = []
    for c in tf.unique(classes).y.numpy().tolist():
        idx = tf.where(classes == c)[:, 0]
        keep = tf.image.non_max_suppression(
            tf.gather(boxes, idx),
            tf.gather(scores, idx),
            max_output_size=max_detections,
            iou_threshold=nms_iou,
        )
        kept.append(tf.gather(idx, keep))
    keep = tf.concat(kept, 0) if kept else tf.zeros([0], tf.int64)
    kept_scores = tf.gather(scores, keep)
    n = tf.minimum(tf.size(keep), max_detections)
    top = tf.math.top_k(kept_scores, k=n, sorted=True).indices
    keep = tf.gather(keep, top)
    pad = max_detections - n
    return {
        "detection_boxes": tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]]),
        "detection_scores": tf.pad(tf.gather(scores, keep), [[0, pad]]),
        "detection_classes": tf.pad(tf.gather(classes, keep), [[0, pad]]),
        "num_detections": tf.cast(n, tf.int32),
    }


def multiscale_detect_fn(
    detect_fn: Callable[[Any, Any], Mapping[str, Any]],
    *,
    sizes: Sequence[int],
    max_size: int,
    size_multiple: int = 16,
    nms_iou: float = 0.3,
    max_detections: int = 100,
) -> Callable[[Any, Any], dict[str, tf.Tensor]]:
    """Wraps a single-scale `detect_fn` into a multi-scale one with the same signature.

    For each image of the batch and each size s in `sizes`: the image's real (h, w) region is
    resized (shorter side s, longer side <= `max_size`) and zero-padded to a multiple of
    `size_multiple` (`inference.preprocess.preprocess`), run through `detect_fn` as a batch of
    one, and its boxes are scaled back by (h / h_s, w / w_s) (`boxes_to_original`). All
    sizes' detections are merged with `merge_detections` (per-class NMS at `nms_iou`, top
    `max_detections`).

    Args:
        detect_fn: `(images uint8 [1, Hs, Ws, 3], image_shapes int32 [1, 2]) -> detections`
            (docs/INTERFACES.md `detect`), e.g. a `tf.function` of `RFCN.detect` with a
            shape-agnostic input signature (each size gives another image shape).
        sizes: shorter sides to test, pixels (R-FCN sec. 4.2: 200, 400, 600, 800, 1000).
        max_size: cap on the longer side of each resized image, pixels.
        size_multiple: padding multiple (the feature stride, 16).
        nms_iou: per-class NMS IoU of the merge (R-FCN sec. 3: 0.3).
        max_detections: M, detections kept per image.

    Returns:
        `fn(images uint8 [B, Hp, Wp, 3], image_shapes int32 [B, 2]) -> {"detection_boxes":
        float32 [B, M, 4] yxyx pixels of the (h, w) input images, "detection_scores" [B, M],
        "detection_classes" int32 [B, M] in 1..C, "num_detections" int32 [B]}`. It runs
        eagerly (Python loops over images and sizes); only `detect_fn` needs to be compiled.
    """
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive shorter sides, got {sizes}")
    if max_size < max(sizes):
        raise ValueError(f"max_size ({max_size}) must be >= the largest size ({max(sizes)})")
    if not 0.0 < nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")

    def detect(images, image_shapes):
        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8 or images.shape.rank != 4:
            raise ValueError(
                f"images must be uint8 [B, Hp, Wp, 3], got {images.dtype} {images.shape}"
            )
        image_shapes = tf.cast(tf.convert_to_tensor(image_shapes), tf.int32).numpy()
        per_image = []
        for b in range(images.shape[0]):
            h, w = (int(v) for v in image_shapes[b])
            image = images[b, :h, :w]
            all_boxes, all_scores, all_classes = [], [], []
            for s in sizes:
                padded, resized_hw = preprocess(
                    image, min_size=s, max_size=max_size, size_multiple=size_multiple
                )
                out = detect_fn(padded[None], resized_hw[None])
                n = int(tf.reshape(out["num_detections"], [-1])[0])
                all_boxes.append(
                    boxes_to_original(out["detection_boxes"][0, :n], resized_hw, [h, w])
                )
                all_scores.append(tf.cast(out["detection_scores"][0, :n], tf.float32))
                all_classes.append(tf.cast(out["detection_classes"][0, :n], tf.int32))
            boxes = tf.concat(all_boxes, 0)  # clipped to (h, w) by boxes_to_original
            per_image.append(
                merge_detections(
                    boxes,
                    tf.concat(all_scores, 0),
                    tf.concat(all_classes, 0),
                    nms_iou=nms_iou,
                    max_detections=max_detections,
                )
            )
        return {key: tf.stack([d[key] for d in per_image]) for key in per_image[0]}

    return detect


def configure_multiscale_input(cfg) -> None:
    """Sets `cfg.data` so the evaluation pipeline feeds images at the largest test size.

    The aspect cap (max_size / shorter side) of the configured evaluation scale is kept at the
    largest of `cfg.eval.multiscale_sizes`, so each test scale only downsamples. Modifies
    `cfg.data.scales` and `cfg.data.max_size` in place.
    """
    from rfcn_tf.data.pipeline import evaluation_scale

    sizes = list(cfg.eval.multiscale_sizes)
    ratio = cfg.data.max_size / float(evaluation_scale(cfg.data.scales))
    cfg.data.scales = [max(sizes)]
    cfg.data.max_size = max(int(round(max(sizes) * ratio)), max(sizes))


def multiscale_detect_fn_from_config(cfg, detect_fn):
    """`multiscale_detect_fn` with the sizes, cap, stride and post-processing of `cfg` (after
    `configure_multiscale_input`)."""
    post = cfg.model.postprocess
    return multiscale_detect_fn(
        detect_fn,
        sizes=list(cfg.eval.multiscale_sizes),
        max_size=cfg.data.max_size,
        size_multiple=cfg.model.backbone.feature_stride,
        nms_iou=post.nms_iou,
        max_detections=post.max_detections,
    )
