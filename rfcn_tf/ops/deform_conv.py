"""Deformable convolution: DCN v1 (Dai et al., ICCV 2017, sec. 2.1) and modulated DCN v2 (Zhu et
al., CVPR 2019), NHWC.

:func:`deform_conv2d` = deformable im2col (the compiled op ``RfcnDeformIm2Col``, or its stock-op
twin in :mod:`rfcn_tf.ops.deform_conv_tf`) followed by one stock MatMul with the reshaped
filters, so the matmul runs in TF's tuned GEMM (oneDNN on CPU, cuBLAS on GPU) and its gradients
(to the columns and the filters) are TF's own; the compiled ``RfcnDeformIm2ColGrad`` maps the
column gradient to the input, offsets and mask.

Shapes (B images, H x W input, Ho x Wo output, T = kh*kw taps, t = ki*kw + kj):

    inputs   [B, H, W, Cin]
    offsets  [B, Ho, Wo, 2*T]   channels (2t, 2t+1) = (dy, dx) of tap t, in input cells
                                (torchvision.ops.deform_conv2d's order, NHWC)
    mask     [B, Ho, Wo, T]     optional modulation (DCN v2; None: DCN v1, all ones)
    filters  [kh, kw, Cin, Cout]
    output   [B, Ho, Wo, Cout]

Tap t of output (ho, wo) samples input position (ho*sh - pad_top + ki*dh + dy,
wo*sw - pad_left + kj*dw + dx) bilinearly, corners outside the map reading 0 (arithmetic:
custom_ops/deformable/deformable_math.h). Zero offsets and mask 1 give tf.nn.conv2d with the
same strides, dilations and padding.
"""

from __future__ import annotations

import tensorflow as tf

from rfcn_tf.ops.deform_psroi_pool import load_library, resolve_impl
from rfcn_tf.ops.deformable_args import normalize_conv_args

__all__ = ["deform_conv2d", "normalize_conv_args"]


def _conv_attrs(op) -> dict:
    return {
        name: op.get_attr(name)
        for name in ("kernel_size", "strides", "dilations", "padding", "explicit_paddings")
    }


@tf.RegisterGradient("RfcnDeformIm2Col")
def _deform_im2col_grad(op, grad):
    """input, offsets, mask via RfcnDeformIm2ColGrad."""
    inputs, offsets, mask = op.inputs
    attrs = _conv_attrs(op)
    attrs["padding"] = (
        attrs["padding"].decode() if isinstance(attrs["padding"], bytes) else attrs["padding"]
    )
    return list(load_library().rfcn_deform_im2_col_grad(inputs, offsets, mask, grad, **attrs))


def deform_im2col(inputs, offsets, mask, kernel_size, strides=1, dilations=1, padding="SAME"):
    """The compiled deformable im2col: [B, Ho, Wo, kh*kw*Cin] (column t*Cin + c)."""
    strides, dilations, padding, pads = normalize_conv_args(strides, dilations, padding)
    return load_library().rfcn_deform_im2_col(
        inputs,
        offsets,
        mask,
        kernel_size=list(kernel_size),
        strides=list(strides),
        dilations=list(dilations),
        padding=padding,
        explicit_paddings=pads,
    )


@tf.autograph.experimental.do_not_convert
def deform_conv2d(
    inputs,
    offsets,
    filters,
    mask=None,
    strides=1,
    dilations=1,
    padding="SAME",
    impl: str = "auto",
    name: str | None = None,
):
    """Deformable 2-D convolution (DCN v1; DCN v2 with ``mask``), NHWC.

    Args:
      inputs: ``[B, H, W, Cin]`` float32 / float64.
      offsets: ``[B, Ho, Wo, 2*kh*kw]`` (dy, dx) per tap, in input cells.
      filters: ``[kh, kw, Cin, Cout]`` (static kh, kw, Cin).
      mask: ``[B, Ho, Wo, kh*kw]`` modulation, or None (DCN v1).
      strides, dilations: int or (rows, cols).
      padding: "SAME" / "VALID" (tf.nn.conv2d's rules), an int, or ((top, bottom), (left,
        right)).
      impl: ``"custom"`` (compiled im2col), ``"tf"`` (stock-op twin) or ``"auto"``.
      name: optional name scope.

    Returns:
      ``[B, Ho, Wo, Cout]``, differentiable w.r.t. inputs, offsets, mask and filters.
    """
    normalize_conv_args(strides, dilations, padding)
    impl = resolve_impl(impl, "deform_conv2d")
    with tf.name_scope(name or "deform_conv2d"):
        if impl == "tf":
            from rfcn_tf.ops.deform_conv_tf import deform_conv2d_tf

            return deform_conv2d_tf(
                inputs,
                offsets,
                filters,
                mask=mask,
                strides=strides,
                dilations=dilations,
                padding=padding,
            )
        inputs = tf.convert_to_tensor(inputs)
        filters = tf.convert_to_tensor(filters, dtype=inputs.dtype)
        offsets = tf.convert_to_tensor(offsets, dtype=inputs.dtype)
        if filters.shape.rank != 4 or not filters.shape[:3].is_fully_defined():
            raise ValueError(
                f"filters must be [kh, kw, Cin, Cout] with static kh, kw, Cin, got "
                f"shape {filters.shape}"
            )
        kh, kw, cin = (int(d) for d in filters.shape[:3])
        if inputs.shape.rank == 4 and inputs.shape[3] is not None and inputs.shape[3] != cin:
            raise ValueError(f"inputs channels ({inputs.shape[3]}) != filters Cin ({cin})")
        if mask is None:
            mask = tf.ones(tf.concat([tf.shape(offsets)[:3], [kh * kw]], 0), inputs.dtype)
        else:
            mask = tf.convert_to_tensor(mask, dtype=inputs.dtype)
        columns = deform_im2col(inputs, offsets, mask, (kh, kw), strides, dilations, padding)
        cshape = tf.shape(columns)
        flat = tf.reshape(columns, [-1, kh * kw * cin])
        out = tf.matmul(flat, tf.reshape(filters, [kh * kw * cin, -1]))
        out = tf.reshape(out, tf.concat([cshape[:3], tf.shape(filters)[3:]], 0))
        out.set_shape(columns.shape[:3].concatenate(filters.shape[3:]))
        return out
