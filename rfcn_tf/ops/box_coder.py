"""Box <-> delta coding relative to reference boxes (anchors or RoIs).

Shape shorthand:
    ...  any leading dimensions shared by boxes/deltas and anchors (anchors may also be
         broadcast, e.g. anchors [N, 4] against boxes [B, N, 4])

Parameterization (Faster R-CNN sec. 3.1.2, eq. 2; R-CNN appendix C), in yxyx order as TF
Model Garden (docs/ARCHITECTURE.md: deltas are (dy, dx, dh, dw)):
    dy = wy * (y_c - ya_c) / h_a     dx = wx * (x_c - xa_c) / w_a
    dh = wh * log(h / h_a)           dw = ww * log(w / w_a)
with h = y2 - y1, w = x2 - x1 (continuous coordinates, no +1) and centres y_c = y1 + h / 2.
`weights` (wy, wx, wh, ww) scale the deltas: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for
the R-FCN head (the same as dividing by the target stds (0.1, 0.1, 0.2, 0.2) of py-faster-rcnn).
When decoding, dh/dw (after dividing by the weights) are clamped at log(1000 / 16) before exp,
so an untrained head cannot produce inf boxes (detectron2 / TF Model Garden convention).
"""

import math

import tensorflow as tf

__all__ = ["BBOX_XFORM_CLIP", "decode_boxes", "encode_boxes"]

# Largest log-scale change decode_boxes applies: a box can grow at most 1000/16 = 62.5 times.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Smallest height/width used as a divisor or log argument in encode_boxes: keeps the deltas of
# degenerate boxes (e.g. padding rows) finite. Real boxes are pixels wide, far above it.
_EPS = 1e-6


def _weights(weights, dtype):
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4 or any(w <= 0.0 for w in weights):
        raise ValueError(f"weights must be 4 positive numbers (wy, wx, wh, ww), got {weights}")
    return [tf.constant(w, dtype) for w in weights]


def _centers_sizes(boxes):
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    h, w = y2 - y1, x2 - x1
    return y1 + 0.5 * h, x1 + 0.5 * w, h, w


def _as_float(t, name, dtype=None):
    t = tf.convert_to_tensor(t)
    if dtype is not None:
        t = tf.cast(t, dtype)
    elif not t.dtype.is_floating:
        t = tf.cast(t, tf.float32)
    if t.shape.rank is not None and t.shape.rank >= 1 and t.shape[-1] not in (None, 4):
        raise ValueError(f"{name} must be [..., 4], got shape {t.shape}")
    return t


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets that move `anchors` onto `boxes`.

    Args:
      boxes: [..., 4] yxyx pixels, the targets (e.g. matched ground truth).
      anchors: [..., 4] yxyx pixels, the reference boxes; broadcastable against boxes.
      weights: (wy, wx, wh, ww) multipliers, positive.

    Returns:
      deltas [..., 4] (dy, dx, dh, dw), boxes' float dtype. Heights and widths below 1e-6
      (degenerate boxes such as padding) are raised to 1e-6, so the result is always finite;
      callers mask such rows out of the loss.
    """
    boxes = _as_float(boxes, "boxes")
    anchors = _as_float(anchors, "anchors", boxes.dtype)
    wy, wx, wh, ww = _weights(weights, boxes.dtype)
    yc, xc, h, w = _centers_sizes(boxes)
    yca, xca, ha, wa = _centers_sizes(anchors)
    h, w = tf.maximum(h, _EPS), tf.maximum(w, _EPS)
    ha, wa = tf.maximum(ha, _EPS), tf.maximum(wa, _EPS)
    dy = wy * (yc - yca) / ha
    dx = wx * (xc - xca) / wa
    dh = wh * tf.math.log(h / ha)
    dw = ww * tf.math.log(w / wa)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Apply deltas to anchors: the inverse of encode_boxes.

    Args:
      deltas: [..., 4] (dy, dx, dh, dw), as predicted by a head (raw, weighted).
      anchors: [..., 4] yxyx pixels; broadcastable against deltas.
      weights: (wy, wx, wh, ww), the same as used to encode the targets.

    Returns:
      boxes [..., 4] yxyx pixels, deltas' float dtype; not clipped to the image. dh / wh and
      dw / ww are clamped at log(1000 / 16) before exp.
    """
    deltas = _as_float(deltas, "deltas")
    anchors = _as_float(anchors, "anchors", deltas.dtype)
    wy, wx, wh, ww = _weights(weights, deltas.dtype)
    yca, xca, ha, wa = _centers_sizes(anchors)
    dy, dx, dh, dw = tf.unstack(deltas, 4, axis=-1)
    dy, dx = dy / wy, dx / wx
    dh = tf.minimum(dh / wh, BBOX_XFORM_CLIP)
    dw = tf.minimum(dw / ww, BBOX_XFORM_CLIP)
    yc = dy * ha + yca
    xc = dx * wa + xca
    h = tf.exp(dh) * ha
    w = tf.exp(dw) * wa
    return tf.stack([yc - 0.5 * h, xc - 0.5 * w, yc + 0.5 * h, xc + 0.5 * w], axis=-1)
