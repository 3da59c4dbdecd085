"""Box utilities in the model's yxyx convention (docs/ARCHITECTURE.md, "Boxes, images, classes").

Shape shorthand:
    ...  any leading (batch) dimensions, the same for every argument of one call
    N, M numbers of boxes

Naming convention:
    boxes / boxes_yxyx  [..., 4] float, (y1, x1, y2, x2); pixels of the resized input image
                        unless the name says `normalized` (then divided by (h, w))
    image_shape         [..., 2] (height, width) in pixels, int or float
    xywh                COCO (x, y, width, height): only for the pycocotools boundary
    xyxy                (x1, y1, x2, y2): for libraries that use it (torchvision, drawing)

Coordinates are continuous: a box's height is y2 - y1 (no +1), an image of height h covers
[0, h]. Every function accepts NumPy arrays or tensors and returns tensors; the float dtype of
`boxes` is kept (float64 in, float64 out), shapes are cast to it.
"""

import tensorflow as tf

__all__ = [
    "area",
    "clip_boxes",
    "denormalize_boxes",
    "filter_small_boxes",
    "intersection",
    "iou",
    "normalize_boxes",
    "xywh_to_yxyx",
    "xyxy_to_yxyx",
    "yxyx_to_xywh",
    "yxyx_to_xyxy",
]


def _as_boxes(boxes, name="boxes"):
    """Tensor of float boxes [..., 4]; ints become float32; other dtypes are kept."""
    boxes = tf.convert_to_tensor(boxes)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    if boxes.shape.rank is not None and boxes.shape.rank >= 1 and boxes.shape[-1] not in (None, 4):
        raise ValueError(f"{name} must be [..., 4], got shape {boxes.shape}")
    return boxes


def _shape_like(image_shape, boxes):
    """image_shape [..., 2] (h, w) cast to boxes' dtype and expanded to broadcast with [..., N, 2].

    `image_shape` may carry fewer leading dimensions than `boxes`' leading dims: it is
    expanded before the last axis, so `[B, 2]` pairs with boxes `[B, N, 4]` and `[2]` with
    boxes `[N, 4]` (or any rank).
    """
    image_shape = tf.cast(tf.convert_to_tensor(image_shape), boxes.dtype)
    if image_shape.shape.rank is None or boxes.shape.rank is None:
        raise ValueError(
            f"boxes and image_shape need a known rank, got {boxes.shape} and {image_shape.shape}"
        )
    if image_shape.shape[-1] not in (None, 2):
        raise ValueError(f"image_shape must be [..., 2] (height, width), got {image_shape.shape}")
    while image_shape.shape.rank < boxes.shape.rank:
        image_shape = tf.expand_dims(image_shape, -2)
    return image_shape


def area(boxes):
    """Area of yxyx boxes.

    Args:
      boxes: [..., 4] (y1, x1, y2, x2). A box with y2 < y1 or x2 < x1 has area 0.

    Returns:
      [...] same float dtype as boxes, in squared units of boxes.
    """
    boxes = _as_boxes(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def intersection(boxes_a, boxes_b):
    """Pairwise intersection areas.

    Args:
      boxes_a: [..., N, 4] yxyx.
      boxes_b: [..., M, 4] yxyx, same leading dims as boxes_a.

    Returns:
      [..., N, M] intersection area of boxes_a[..., n] and boxes_b[..., m] (0 when disjoint).
    """
    boxes_a = _as_boxes(boxes_a, "boxes_a")
    boxes_b = tf.cast(_as_boxes(boxes_b, "boxes_b"), boxes_a.dtype)
    ay1, ax1, ay2, ax2 = [t[..., :, None] for t in tf.unstack(boxes_a, 4, axis=-1)]
    by1, bx1, by2, bx2 = [t[..., None, :] for t in tf.unstack(boxes_b, 4, axis=-1)]
    h = tf.maximum(tf.minimum(ay2, by2) - tf.maximum(ay1, by1), 0.0)
    w = tf.maximum(tf.minimum(ax2, bx2) - tf.maximum(ax1, bx1), 0.0)
    return h * w


def iou(boxes_a, boxes_b):
    """Pairwise intersection over union.

    Args:
      boxes_a: [..., N, 4] yxyx.
      boxes_b: [..., M, 4] yxyx, same leading dims as boxes_a.

    Returns:
      [..., N, M] IoU in [0, 1]; exactly 0 where either box has zero area (so degenerate or
      padding boxes such as (-1, -1, -1, -1) never match anything, themselves included).
    """
    boxes_a = _as_boxes(boxes_a, "boxes_a")
    boxes_b = tf.cast(_as_boxes(boxes_b, "boxes_b"), boxes_a.dtype)
    inter = intersection(boxes_a, boxes_b)
    area_a = area(boxes_a)[..., :, None]
    area_b = area(boxes_b)[..., None, :]
    union = area_a + area_b - inter
    nonempty = (area_a > 0.0) & (area_b > 0.0)
    # divide_no_nan keeps the masked branch finite so gradients through tf.where stay finite.
    return tf.where(nonempty, tf.math.divide_no_nan(inter, union), tf.zeros_like(inter))


def clip_boxes(boxes, image_shape):
    """Clip yxyx pixel boxes to the image: y into [0, height], x into [0, width].

    Args:
      boxes: [..., N, 4] (or [..., 4]) yxyx pixels.
      image_shape: (height, width) in pixels: [2], or [..., 2] with the leading dims of boxes
        except the box axis (e.g. [B, 2] for boxes [B, N, 4]).

    Returns:
      boxes' shape and dtype, clipped.
    """
    boxes = _as_boxes(boxes)
    shape = _shape_like(image_shape, boxes)
    h, w = shape[..., 0], shape[..., 1]
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    zero = tf.zeros([], boxes.dtype)
    return tf.stack(
        [
            tf.clip_by_value(y1, zero, h),
            tf.clip_by_value(x1, zero, w),
            tf.clip_by_value(y2, zero, h),
            tf.clip_by_value(x2, zero, w),
        ],
        axis=-1,
    )


def normalize_boxes(boxes, image_shape):
    """yxyx pixels -> yxyx normalized (y / height, x / width). Shapes as in clip_boxes."""
    boxes = _as_boxes(boxes)
    shape = _shape_like(image_shape, boxes)
    scale = tf.concat([shape, shape], axis=-1)  # (h, w, h, w)
    return boxes / scale


def denormalize_boxes(boxes, image_shape):
    """yxyx normalized -> yxyx pixels (y * height, x * width). Shapes as in clip_boxes."""
    boxes = _as_boxes(boxes)
    shape = _shape_like(image_shape, boxes)
    scale = tf.concat([shape, shape], axis=-1)
    return boxes * scale


def yxyx_to_xywh(boxes):
    """(y1, x1, y2, x2) -> COCO (x, y, width, height). [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_yxyx(boxes):
    """COCO (x, y, width, height) -> (y1, x1, y2, x2). [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    x, y, w, h = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([y, x, y + h, x + w], axis=-1)


def yxyx_to_xyxy(boxes):
    """(y1, x1, y2, x2) -> (x1, y1, x2, y2). [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


def xyxy_to_yxyx(boxes):
    """(x1, y1, x2, y2) -> (y1, x1, y2, x2). [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes)
    return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


def filter_small_boxes(boxes, min_size):
    """Mask of boxes large enough to keep (Faster R-CNN sec. 3.3 removes tiny proposals).

    Args:
      boxes: [..., 4] yxyx.
      min_size: minimum height and width, in boxes' units (pixels). A box is kept when
        height >= min_size and width >= min_size and both are > 0: a degenerate (zero-area or
        inverted) box is never kept, even with min_size 0.

    Returns:
      [...] bool, True where the box is kept.
    """
    boxes = _as_boxes(boxes)
    min_size = tf.cast(min_size, boxes.dtype)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    h, w = y2 - y1, x2 - x1
    return (h >= min_size) & (w >= min_size) & (h > 0.0) & (w > 0.0)
