"""THE resize -> pad -> detect -> rescale path, as graph-safe TensorFlow functions.

Every consumer of a trained detector goes through these functions: the `Detector` API
(`rfcn_tf.load`), the predict CLI, evaluation (single scale via the data pipeline's same
`resize_image`, and multi-scale in `rfcn_tf.evaluation.multiscale`), the export's serving
graph and the inference benchmark. They use TF ops only, so they run eagerly and inside a
`tf.function` (the serving signatures trace them).

The steps (R-FCN sec. 3, single-scale testing):

1. `preprocess(image, min_size=, max_size=, size_multiple=)`: uint8 `[H, W, 3]` ->
   `(padded uint8 [Hp, Wp, 3], resized_hw int32 [2])`. The image is resized with
   `rfcn_tf.data.transforms.resize_image` (the training/evaluation resize: shorter side
   `min_size`, longer side at most `max_size`, aspect kept, bilinear, rounded to uint8) to
   `resized_hw = (h, w)` and zero-padded bottom/right so Hp, Wp are multiples of
   `size_multiple` (the feature stride, 16). Pixel (y, x) of the resized image stays at (y, x).
2. `pad_batch(images, size_multiple=)`: a Python list of uint8 `[h_i, w_i, 3]` tensors (or a
   `tf.RaggedTensor` `[N, (h), (w), 3]`) -> `(batch uint8 [N, Hp, Wp, 3], image_shapes int32
   [N, 2])`: every image zero-padded bottom/right to one size (the largest h and w, rounded up
   to a multiple of `size_multiple`); `image_shapes[i] = (h_i, w_i)`, the real region.
3. detect: `detect_fn(batch, image_shapes)` (`RFCN.detect`: yxyx boxes in pixels of each
   resized image, classes 1..C, rows past `num_detections` zero).
4. `boxes_to_original(boxes, resized_hw, original_hw)`: yxyx pixels of the resized image ->
   yxyx pixels of the original image (`y * H / h`, `x * W / w`), clipped to `[0, H] x [0, W]`.
   With `original_hw = (1, 1)` this gives the serving signature's normalized boxes
   (`normalize_boxes`).

`detect_images` chains 1-4 for a list of images of any sizes.

Shape shorthand: (H, W) original image, (h, w) = resized_hw, (Hp, Wp) padded, N images,
M detections per image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from rfcn_tf.data.transforms import pad_to_multiple, resize_image

__all__ = [
    "DETECTION_KEYS",
    "boxes_to_original",
    "detect_images",
    "normalize_boxes",
    "pad_batch",
    "preprocess",
]

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def preprocess(image, *, min_size, max_size, size_multiple: int = 16):
    """Resize (the evaluation resize) then zero-pad to a multiple of the stride.

    Args:
        image: uint8 `[H, W, 3]` RGB (H, W >= 1), tensor or array.
        min_size: target shorter side, pixels (int or scalar tensor).
        max_size: cap on the longer side, pixels (int or scalar tensor).
        size_multiple: Hp and Wp are multiples of it (the feature stride).

    Returns:
        `(padded uint8 [Hp, Wp, 3], resized_hw int32 [2])`: `resized_hw = (h, w)` is the
        resized image's size, the region of `padded` that holds it (top-left).
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(f"preprocess takes a uint8 [H, W, 3] image, got {image.dtype}")
    resized, _ = resize_image(image, min_size=min_size, max_size=max_size)
    resized_hw = tf.cast(tf.shape(resized)[:2], tf.int32)
    return pad_to_multiple(resized, multiple=int(size_multiple)), resized_hw


def pad_batch(images, *, size_multiple: int = 16, image_shapes=None):
    """Zero-pads differently sized images to one batch.

    Args:
        images: a list/tuple of uint8 `[h_i, w_i, 3]` tensors (each may already be padded: pass
            their real sizes as `image_shapes`), or a `tf.RaggedTensor` `[N, (h), (w), 3]`.
        size_multiple: Hp and Wp are rounded up to a multiple of it.
        image_shapes: optional int `[N, 2]` real (h, w) of each image; default: each image's
            own height and width.

    Returns:
        `(batch uint8 [N, Hp, Wp, 3], image_shapes int32 [N, 2])`.
    """
    if isinstance(images, tf.RaggedTensor):
        heights = images.row_lengths(axis=1)
        widths = tf.gather(images.values.row_lengths(), images.row_starts())
        own = tf.cast(tf.stack([heights, widths], axis=1), tf.int32)
        dense = images.to_tensor()
        if image_shapes is None:
            image_shapes = own
        return pad_to_multiple(dense, multiple=int(size_multiple)), image_shapes
    images = [tf.convert_to_tensor(im) for im in images]
    if not images:
        raise ValueError("pad_batch needs at least one image")
    own = tf.stack([tf.shape(im)[:2] for im in images])
    target = tf.reduce_max(own, axis=0)
    multiple = int(size_multiple)
    target = (target + multiple - 1) // multiple * multiple
    padded = [
        tf.pad(im, [[0, target[0] - tf.shape(im)[0]], [0, target[1] - tf.shape(im)[1]], [0, 0]])
        for im in images
    ]
    batch = tf.ensure_shape(tf.stack(padded), [len(images), None, None, None])
    if image_shapes is None:
        image_shapes = own
    return batch, tf.cast(image_shapes, tf.int32)


def boxes_to_original(boxes, resized_hw, original_hw):
    """yxyx pixels of the resized image -> yxyx pixels of the original, clipped to it.

    Args:
        boxes: float `[M, 4]` (with `resized_hw`/`original_hw` `[2]`) or `[N, M, 4]` (with
            `[N, 2]`), yxyx pixels of the resized (unpadded) image.
        resized_hw: int or float (h, w) of the resized image(s), > 0.
        original_hw: (H, W) of the original image(s); `(1, 1)` gives normalized boxes.

    Returns:
        float32 like `boxes`: `(y1 * H / h, x1 * W / w, y2 * H / h, x2 * W / w)`, clipped to
        `[0, H]` and `[0, W]`.
    """
    boxes = tf.cast(boxes, tf.float32)
    resized = tf.cast(resized_hw, tf.float32)
    original = tf.cast(original_hw, tf.float32)
    scale = tf.concat([original / resized, original / resized], axis=-1)
    limit = tf.concat([original, original], axis=-1)
    if (
        boxes.shape.rank is not None
        and scale.shape.rank is not None
        and boxes.shape.rank == scale.shape.rank + 1
    ):
        scale = tf.expand_dims(scale, -2)
        limit = tf.expand_dims(limit, -2)
    return tf.clip_by_value(boxes * scale, 0.0, limit)


def normalize_boxes(boxes, resized_hw):
    """yxyx pixels of the resized image -> yxyx normalized to [0, 1] (the serving output)."""
    return boxes_to_original(boxes, resized_hw, tf.ones_like(tf.cast(resized_hw, tf.float32)))


def detect_images(
    detect_fn: Callable[[Any, Any], Mapping[str, Any]],
    images: Sequence[Any],
    *,
    min_size,
    max_size,
    size_multiple: int = 16,
    normalized: bool = False,
) -> dict[str, tf.Tensor]:
    """The whole path for a list of original images of any sizes, in one `detect_fn` call.

    Args:
        detect_fn: `(images uint8 [N, Hp, Wp, 3], image_shapes int32 [N, 2]) -> detections`
            (`RFCN.detect`: `detection_boxes` [N, M, 4] yxyx pixels of each resized image,
            `detection_scores` [N, M], `detection_classes` int [N, M] 1..C,
            `num_detections` int [N]).
        images: list of uint8 `[H_i, W_i, 3]` (tensors or arrays), H_i, W_i >= 1.
        min_size, max_size, size_multiple: as in `preprocess`.
        normalized: return boxes normalized to [0, 1] instead of original pixels.

    Returns:
        `{"detection_boxes": float32 [N, M, 4] yxyx ORIGINAL-image pixels (or normalized),
        "detection_scores": float32 [N, M], "detection_classes": int32 [N, M],
        "num_detections": int32 [N]}`.
    """
    originals, resized, resized_hws = [], [], []
    for image in images:
        image = tf.convert_to_tensor(image)
        originals.append(tf.shape(image)[:2])
        padded, hw = preprocess(
            image, min_size=min_size, max_size=max_size, size_multiple=size_multiple
        )
        resized.append(padded)
        resized_hws.append(hw)
    batch, image_shapes = pad_batch(
        resized, size_multiple=size_multiple, image_shapes=tf.stack(resized_hws)
    )
    out = detect_fn(batch, image_shapes)
    original_hw = tf.ones_like(image_shapes) if normalized else tf.stack(originals)
    return {
        "detection_boxes": boxes_to_original(out["detection_boxes"], image_shapes, original_hw),
        "detection_scores": tf.cast(out["detection_scores"], tf.float32),
        "detection_classes": tf.cast(out["detection_classes"], tf.int32),
        "num_detections": tf.cast(tf.reshape(out["num_detections"], [-1]), tf.int32),
    }
