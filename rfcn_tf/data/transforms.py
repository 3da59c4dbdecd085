"""Image and box transforms shared by training, evaluation and export.

Shape shorthand:
    H0, W0  original image height and width (pixels)
    H, W    resized image height and width (pixels)
    Hp, Wp  padded height and width (multiples of 16)
    N       boxes of one image
    G       padded ground-truth rows (at least data.max_boxes; never fewer than the boxes)

Box formats: `boxes_normalized` are yxyx in [0, 1] (docs/ARCHITECTURE.md: what sources emit); they do not
change under resizing. `boxes_px` are yxyx in pixels of the resized image (what the model
consumes). Seeds are stateless int32/int64 `[2]` tensors: the same seed gives the same result.

`resize_image` is THE preprocessing: training, evaluation and the exported serving graph all call
it, so a model sees the same pixels in every setting (Faster R-CNN sec. 3.3 / R-FCN sec. 4.1:
shorter side scaled to `min_size`, longer side capped at `max_size`).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

__all__ = [
    "choose_scale",
    "flip_boxes_horizontally",
    "pad_ground_truth",
    "pad_to_multiple",
    "photometric_jitter",
    "random_horizontal_flip",
    "resize_image",
    "resize_image_if_needed",
    "resized_shape",
]


def resize_image(image: tf.Tensor, *, min_size, max_size):
    """Resizes so the shorter side is `min_size`, unless the longer side would pass `max_size`.

    scale = min(min_size / min(H0, W0), max_size / max(H0, W0)); the output is
    (round(H0 * scale), round(W0 * scale)) (at least 1 pixel), aspect kept. Bilinear sampling
    (half-pixel centers), rounded back to uint8. Normalized boxes are unchanged by it.

    Args:
      image: uint8 [H0, W0, 3] RGB.
      min_size: target shorter side, pixels: int or int/float scalar tensor (multi-scale).
      max_size: cap on the longer side, pixels: int or scalar tensor.

    Returns:
      (resized uint8 [H, W, 3], scale float32 []): H = round(H0 * scale) etc.; multiply
      original-pixel coordinates by `scale` (or better, use normalized boxes) to map them.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"resize_image takes one image [H, W, 3], got shape {image.shape}")
    new_hw, scale = resized_shape(tf.shape(image)[:2], min_size=min_size, max_size=max_size)
    resized = tf.image.resize(image, new_hw, method="bilinear")
    resized = tf.saturate_cast(tf.round(resized), tf.uint8)
    return tf.ensure_shape(resized, [None, None, 3]), scale


def resized_shape(image_shape, *, min_size, max_size):
    """The (height, width) `resize_image` produces for an image of `image_shape`.

    Args:
      image_shape: int [2] (H0, W0).
      min_size, max_size: as in `resize_image`.

    Returns:
      (int32 [2] (H, W), scale float32 []).
    """
    hw = tf.cast(image_shape, tf.float32)
    min_size = tf.cast(min_size, tf.float32)
    max_size = tf.cast(max_size, tf.float32)
    scale = tf.minimum(min_size / tf.reduce_min(hw), max_size / tf.reduce_max(hw))
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    return new_hw, scale


def resize_image_if_needed(image: tf.Tensor, *, min_size, max_size):
    """`resize_image`, skipping the resampling when the size does not change.

    Bilinear resampling to the same size is the identity, so the output equals
    `resize_image`'s; the input pipeline uses this to save a full-image pass (shapes drawn at
    the training size). Same arguments and returns as `resize_image`.
    """
    image = tf.convert_to_tensor(image)
    new_hw, scale = resized_shape(tf.shape(image)[:2], min_size=min_size, max_size=max_size)
    same = tf.reduce_all(tf.equal(new_hw, tf.shape(image)[:2]))
    resized = tf.cond(
        same,
        lambda: tf.identity(image),
        lambda: resize_image(image, min_size=min_size, max_size=max_size)[0],
    )
    return tf.ensure_shape(resized, [None, None, 3]), scale


def pad_to_multiple(image: tf.Tensor, multiple: int = 16) -> tf.Tensor:
    """Zero-pads bottom and right so height and width are multiples of `multiple`.

    Args:
      image: [H, W, C] or [B, H, W, C], any dtype.
      multiple: the stride the backbone needs (16 for R-FCN's conv5 with dilation).

    Returns:
      [Hp, Wp, C] or [B, Hp, Wp, C], same dtype; pixel (y, x) of the input stays at (y, x).
    """
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"pad_to_multiple takes [H, W, C] or [B, H, W, C], got {image.shape}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    shape = tf.shape(image)
    h, w = shape[rank - 3], shape[rank - 2]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    if rank == 4:
        paddings = [[0, 0]] + paddings
    return tf.pad(image, paddings)


def flip_boxes_horizontally(boxes_normalized: tf.Tensor) -> tf.Tensor:
    """Mirrors normalized yxyx boxes left-right: x1' = 1 - x2, x2' = 1 - x1. [N, 4] -> [N, 4]."""
    y1, x1, y2, x2 = tf.unstack(boxes_normalized, 4, axis=-1)
    return tf.stack([y1, 1.0 - x2, y2, 1.0 - x1], axis=-1)


def random_horizontal_flip(
    image: tf.Tensor, boxes_normalized: tf.Tensor, *, seed, probability: float = 0.5
):
    """Flips image and boxes together with probability `probability`.

    Args:
      image: [H, W, 3] any dtype.
      boxes_normalized: float32 [N, 4] yxyx in [0, 1].
      seed: stateless seed [2].
      probability: chance of flipping.

    Returns:
      (image [H, W, 3], boxes_normalized [N, 4], flipped bool []). Pixel column x moves to
      W - 1 - x, which is exactly where the box's continuous edges 1 - x go.
    """
    image = tf.convert_to_tensor(image)
    boxes_normalized = tf.convert_to_tensor(boxes_normalized)
    flipped = tf.random.stateless_uniform([], seed) < probability
    image = tf.cond(flipped, lambda: tf.reverse(image, axis=[1]), lambda: tf.identity(image))
    boxes = tf.cond(
        flipped,
        lambda: flip_boxes_horizontally(boxes_normalized),
        lambda: tf.identity(boxes_normalized),
    )
    return image, boxes, flipped


def photometric_jitter(
    image: tf.Tensor,
    *,
    seed,
    brightness: float = 32.0 / 255.0,
    contrast: float = 0.5,
    saturation: float = 0.5,
    hue: float = 0.05,
) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue changes (SSD-style color distortion).

    Args:
      image: uint8 [H, W, 3] RGB.
      seed: stateless seed [2].
      brightness: max delta added, in [0, 1] image units.
      contrast: contrast factor drawn from [1 - contrast, 1 + contrast].
      saturation: saturation factor drawn from [1 - saturation, 1 + saturation].
      hue: max hue shift, in turns ([0, 0.5]).

    Returns:
      uint8 [H, W, 3].
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    x = tf.image.convert_image_dtype(image, tf.float32)
    x = tf.image.stateless_random_brightness(x, brightness, seeds[0])
    x = tf.image.stateless_random_contrast(x, 1.0 - contrast, 1.0 + contrast, seeds[1])
    x = tf.image.stateless_random_saturation(x, 1.0 - saturation, 1.0 + saturation, seeds[2])
    x = tf.image.stateless_random_hue(x, hue, seeds[3])
    x = tf.clip_by_value(x, 0.0, 1.0)
    return tf.saturate_cast(tf.round(x * 255.0), tf.uint8)


def choose_scale(scales: Sequence[int], *, seed) -> tf.Tensor:
    """One of `scales` uniformly at random (multi-scale training, R-FCN sec. 4.1). int32 []."""
    scales = tf.constant(list(scales), tf.int32)
    index = tf.random.stateless_uniform(
        [], seed, minval=0, maxval=tf.shape(scales)[0], dtype=tf.int32
    )
    return scales[index]


def pad_ground_truth(
    max_boxes: int, fixed: bool = True, **per_box: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Pads per-box tensors with filler rows; never drops a box.

    Args:
      max_boxes: G. With `fixed` the output has exactly G rows (static shape) and an image
        with more than G boxes is an error (InvalidArgumentError naming both counts): the
        caller sizes G from the data (`data.pipeline` takes the largest box count the source
        reports). Without `fixed` the output has max(N, G) rows (a dynamic shape; batching
        pads to the batch's largest), for sources whose box counts are not known up front.
      fixed: see `max_boxes`.
      **per_box: tensors [N, ...] with the same N; padding rows are -1 for numeric dtypes and
        False for bool.

    Returns:
      The same keys with shape [G, ...] (or [max(N, G), ...]), plus `mask` bool (True for the
      N real rows, which come first in their input order).
    """
    out = {}
    n = None
    for key, value in per_box.items():
        value = tf.convert_to_tensor(value)
        n = tf.shape(value)[0] if n is None else n
        rows = tf.maximum(tf.shape(value)[0], max_boxes)
        if fixed:
            check = tf.debugging.assert_less_equal(
                tf.shape(value)[0],
                max_boxes,
                message=f"pad_ground_truth: more boxes than the {max_boxes} padded rows "
                f"(size the padding from the data)",
            )
            with tf.control_dependencies([check]):
                rows = tf.identity(rows)
        pad = rows - tf.shape(value)[0]
        fill = False if value.dtype == tf.bool else -1
        paddings = [[0, pad]] + [[0, 0]] * (value.shape.rank - 1)
        value = tf.pad(value, paddings, constant_values=tf.constant(fill, value.dtype))
        out[key] = tf.ensure_shape(
            value, [max_boxes if fixed else None] + value.shape.as_list()[1:]
        )
    n = 0 if n is None else n
    rows = max_boxes if fixed else tf.maximum(n, max_boxes)
    out["mask"] = tf.range(rows) < n
    return out
