"""Deformable convolution (DCN v1 / modulated DCN v2) from stock TensorFlow ops: the twin of
:func:`rfcn_tf.ops.deform_conv.deform_conv2d`'s compiled path, with the same numbers.

Deformable im2col by four corner gathers (zero-padded bilinear sampling, corners outside the map
read 0), then one MatMul with the reshaped filters. Only gather, floor, where, cast, reshape,
matmul and arithmetic: a SavedModel with it keeps stock ops and tf2onnx converts it. B, H, W may
be unknown inside tf.function; kh, kw, Cin must be static. Layouts and rules: the module
docstring of rfcn_tf.ops.deform_conv and custom_ops/deformable/deformable_math.h.
"""

from __future__ import annotations

import tensorflow as tf

from rfcn_tf.ops.deformable_args import normalize_conv_args

__all__ = ["deform_conv2d_tf"]


def _axis(size, kernel, stride, dilation, padding, pads):
    """(out, pad_before) of one axis as int32 tensors (tf.nn.conv2d's rules)."""
    span = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = (size + stride - 1) // stride
        return out, tf.maximum((out - 1) * stride + span - size, 0) // 2
    if padding == "VALID":
        return (size - span) // stride + 1, tf.constant(0, tf.int32)
    before, after = pads
    return (size + before + after - span) // stride + 1, tf.constant(before, tf.int32)


def deform_conv2d_tf(
    inputs, offsets, filters, mask=None, strides=1, dilations=1, padding="SAME", name=None
):
    """Deformable conv with stock ops; arguments as :func:`rfcn_tf.ops.deform_conv.deform_conv2d`.

    Returns:
        [B, Ho, Wo, Cout] of inputs.dtype (float16 / bfloat16 computed in float32).
    """
    strides, dilations, padding, pads = normalize_conv_args(strides, dilations, padding)
    with tf.name_scope(name or "deform_conv2d_tf"):
        inputs = tf.convert_to_tensor(inputs, name="inputs")
        dtype = inputs.dtype
        compute = tf.float64 if dtype == tf.float64 else tf.float32
        x = tf.cast(inputs, compute)
        filters = tf.cast(tf.convert_to_tensor(filters, name="filters"), compute)
        if filters.shape.rank != 4 or not filters.shape[:3].is_fully_defined():
            raise ValueError(
                f"filters must be [kh, kw, Cin, Cout] with static kh, kw, Cin, got "
                f"shape {filters.shape}"
            )
        kh, kw, cin = (int(d) for d in filters.shape[:3])
        taps = kh * kw
        shape = tf.shape(x, out_type=tf.int32)
        batch, height, width = shape[0], shape[1], shape[2]
        out_h, pad_top = _axis(height, kh, strides[0], dilations[0], padding, pads[:2])
        out_w, pad_left = _axis(width, kw, strides[1], dilations[1], padding, pads[2:])

        off = tf.reshape(tf.cast(offsets, tf.float64), [batch, out_h, out_w, taps, 2])
        ki = tf.repeat(tf.range(kh), kw)  # tap t = ki*kw + kj
        kj = tf.tile(tf.range(kw), [kh])
        base_y = tf.range(out_h)[:, None] * strides[0] - pad_top + ki[None, :] * dilations[0]
        base_x = tf.range(out_w)[:, None] * strides[1] - pad_left + kj[None, :] * dilations[1]
        y = tf.cast(base_y, tf.float64)[None, :, None, :] + off[..., 0]  # [B, Ho, Wo, T]
        x_pos = tf.cast(base_x, tf.float64)[None, None, :, :] + off[..., 1]
        y0, x0 = tf.floor(y), tf.floor(x_pos)
        ly, lx = y - y0, x_pos - x0
        limit_h = tf.cast(height, tf.float64)
        limit_w = tf.cast(width, tf.float64)
        image = tf.reshape(tf.range(batch), [-1, 1, 1, 1]) * height
        flat = tf.reshape(x, [-1, cin])  # [B*H*W, Cin]
        columns = None
        for dy, wy in ((0.0, 1.0 - ly), (1.0, ly)):
            row = y0 + dy
            row_ok = tf.logical_and(row >= 0.0, row <= limit_h - 1.0)
            for dx, wx in ((0.0, 1.0 - lx), (1.0, lx)):
                col = x0 + dx
                ok = tf.logical_and(row_ok, tf.logical_and(col >= 0.0, col <= limit_w - 1.0))
                weight = tf.where(ok, wy * wx, tf.zeros_like(wy))  # [B, Ho, Wo, T]
                r_i = tf.cast(tf.where(ok, row, tf.zeros_like(row)), tf.int32)
                c_i = tf.cast(tf.where(ok, col, tf.zeros_like(col)), tf.int32)
                term = tf.cast(weight, compute)[..., None] * tf.gather(
                    flat, (image + r_i) * width + c_i
                )  # [B, Ho, Wo, T, Cin]
                columns = term if columns is None else columns + term
        if mask is not None:
            columns = columns * tf.cast(mask, compute)[..., None]
        flat_cols = tf.reshape(columns, [-1, taps * cin])
        out = tf.matmul(flat_cols, tf.reshape(filters, [taps * cin, -1]))
        out = tf.reshape(out, tf.stack([batch, out_h, out_w, tf.shape(filters)[3]]))
        return tf.cast(out, dtype)
