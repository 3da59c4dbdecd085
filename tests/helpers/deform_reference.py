"""Independent float64 NumPy references of the deformable ops, written with plain loops from the
papers' definitions (Deformable ConvNets, Dai et al. ICCV 2017, sec. 2.1-2.2; modulated DCN v2,
Zhu et al. CVPR 2019) and the rules stated in custom_ops/deformable/deformable_math.h. They share
no code with the op, the twins or the PS-RoI reference.

deform_ps_roi_pool_reference: out[r, i, j, c] = mean over the n x n sample points of bin (i, j)
shifted by offsets[r, i, j, g] * trans_std * (roi_h, roi_w), of the bilinear value of channel
(i*k + j)*C + c (PSRoIAlign rules: corners y*scale - 0.5, a point outside [-1, H] counts 0,
v < 0 -> 0, at or past the last cell it reads that cell alone).

deform_conv2d_reference: out[b, ho, wo, o] = sum over taps t = ki*kw + kj and channels c of
mask * bilinear(x[b, :, :, c], ho*s - pad + ki*d + dy, wo*s - pad + kj*d + dx) * w[ki, kj, c, o],
bilinear with zero padding (corners outside the map read 0).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "conv_output_size",
    "deform_conv2d_reference",
    "deform_ps_roi_pool_reference",
    "numeric_gradient",
]


def _pool_axis_value(v, size):
    """[(cell, weight)] of one axis of a PSRoIAlign sample point, or None when outside."""
    if not (-1.0 <= v <= size):
        return None
    v = max(v, 0.0)
    lo = math.floor(v)
    if lo >= size - 1:
        return [(size - 1, 1.0)]
    frac = v - lo
    return [(lo, 1.0 - frac), (lo + 1, frac)]


def deform_ps_roi_pool_reference(
    features, rois, offsets, k, spatial_scale, sampling_ratio, trans_std
):
    """features [B, H, W, k*k*C], rois [R, 5], offsets [R, k, k, 2] or [R, k, k, G, 2]
    -> [R, k, k, C] float64."""
    features = np.asarray(features, np.float64)
    rois = np.asarray(rois, np.float32).astype(np.float64)
    offsets = np.asarray(offsets, np.float64)
    if offsets.ndim == 4:
        offsets = offsets[:, :, :, None, :]
    batch, height, width, channels = features.shape
    num_out = channels // (k * k)
    groups = offsets.shape[3]
    per_group = num_out // groups
    scale = float(np.float32(spatial_scale))
    gamma = float(np.float32(trans_std))
    n = sampling_ratio
    out = np.zeros((len(rois), k, k, num_out))
    for r, (bf, y1, x1, y2, x2) in enumerate(rois):
        if not 0 <= bf < batch:
            raise ValueError(f"rois row {r} has batch index {bf} outside [0, {batch})")
        b = int(bf)
        ys, xs = y1 * scale - 0.5, x1 * scale - 0.5
        roi_h, roi_w = (y2 * scale - 0.5) - ys, (x2 * scale - 0.5) - xs
        for i in range(k):
            for j in range(k):
                for c in range(num_out):
                    dy, dx = offsets[r, i, j, c // per_group]
                    top = ys + i * roi_h / k + dy * gamma * roi_h
                    left = xs + j * roi_w / k + dx * gamma * roi_w
                    total = 0.0
                    for py in range(n):
                        rows = _pool_axis_value(top + (py + 0.5) * roi_h / k / n, height)
                        for px in range(n):
                            cols = _pool_axis_value(left + (px + 0.5) * roi_w / k / n, width)
                            if rows is None or cols is None:
                                continue
                            for h, wy in rows:
                                for w, wx in cols:
                                    total += wy * wx * features[b, h, w, (i * k + j) * num_out + c]
                    out[r, i, j, c] = total / (n * n)
    return out


def conv_output_size(size, kernel, stride, dilation, padding):
    """(out, pad_before) of one axis: padding "SAME", "VALID" or (before, after)."""
    span = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        return out, max((out - 1) * stride + span - size, 0) // 2
    if padding == "VALID":
        return (size - span) // stride + 1, 0
    before, after = padding
    return (size + before + after - span) // stride + 1, before


def _conv_sample(image, y, x):
    """Zero-padded bilinear value of image [H, W, C] at (y, x): [C]."""
    height, width, _ = image.shape
    value = np.zeros(image.shape[2])
    y0, x0 = math.floor(y), math.floor(x)
    for h, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for w, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= h < height and 0 <= w < width:
                value = value + wy * wx * image[h, w]
    return value


def deform_conv2d_reference(
    inputs, offsets, filters, mask=None, strides=(1, 1), dilations=(1, 1), padding="SAME"
):
    """inputs [B, H, W, Cin], offsets [B, Ho, Wo, 2*kh*kw] ((dy, dx) per tap t = ki*kw + kj),
    filters [kh, kw, Cin, Cout], mask [B, Ho, Wo, kh*kw] or None -> [B, Ho, Wo, Cout] float64.
    padding: "SAME", "VALID" or ((top, bottom), (left, right))."""
    inputs = np.asarray(inputs, np.float64)
    offsets = np.asarray(offsets, np.float64)
    filters = np.asarray(filters, np.float64)
    batch, height, width, _ = inputs.shape
    kh, kw, _, cout = filters.shape
    pads = (padding, padding) if isinstance(padding, str) else padding
    out_h, pad_top = conv_output_size(height, kh, strides[0], dilations[0], pads[0])
    out_w, pad_left = conv_output_size(width, kw, strides[1], dilations[1], pads[1])
    if mask is None:
        mask = np.ones((batch, out_h, out_w, kh * kw))
    mask = np.asarray(mask, np.float64)
    out = np.zeros((batch, out_h, out_w, cout))
    for b in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                for ki in range(kh):
                    for kj in range(kw):
                        t = ki * kw + kj
                        y = (
                            ho * strides[0]
                            - pad_top
                            + ki * dilations[0]
                            + offsets[b, ho, wo, 2 * t]
                        )
                        x = (
                            wo * strides[1]
                            - pad_left
                            + kj * dilations[1]
                            + offsets[b, ho, wo, 2 * t + 1]
                        )
                        value = mask[b, ho, wo, t] * _conv_sample(inputs[b], y, x)
                        out[b, ho, wo] += value @ filters[ki, kj]
    return out


def numeric_gradient(fn, x, grad_out, eps=1e-6):
    """d sum(fn(x) * grad_out) / dx by central differences (float64)."""
    x = np.array(x, np.float64)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for idx in range(flat.size):
        keep = flat[idx]
        flat[idx] = keep + eps
        plus = np.sum(fn(x) * grad_out)
        flat[idx] = keep - eps
        minus = np.sum(fn(x) * grad_out)
        flat[idx] = keep
        gflat[idx] = (plus - minus) / (2 * eps)
    return grad
