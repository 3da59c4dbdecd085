"""Deformable PS-RoI pooling from stock TensorFlow ops: the pure-TF twin of RfcnDeformPsRoiPool.

Deformable ConvNets (Dai et al., ICCV 2017) sec. 2.2 on top of PSRoIAlign (ps_roi_pool's
``mode="bilinear"``). Only gather, matmul, floor, where, cast, reshape and arithmetic, so a
SavedModel that uses it keeps stock ops and tf2onnx converts it; every shape but k, G may be
unknown inside ``tf.function``. The arithmetic (shared with the op): a bin's start moves by
``offset * trans_std * roi_extent``; then the bilinear rules of ps_roi_pool apply per sample
point (custom_ops/deformable/deformable_math.h). Geometry in float64; zero offsets reproduce
``ps_roi_pool_tf(mode="bilinear")``.

Shape shorthand: R RoIs, k bins per side, G offset groups, n = sampling_ratio, C classes,
Cg = C / G classes per group, P = 4 n^2 taps per bin.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rfcn_tf.ops.deformable_args import validate_pool_args

__all__ = ["deform_ps_roi_pool_tf"]


def _axis_taps(bin_start, bin_size, n, limit):
    """Taps of the n sample points of shifted bins along one axis.

    Args:
        bin_start: [R, k, k, G] float64 shifted bin starts; bin_size: [R, 1, 1, 1] float64.
        limit: int32 scalar H or W.
    Returns:
        index [R, k, k, G, n, 2] int32 (low, high) cells; weight [R, k, k, G, n, 2] float64,
        0 for an invalid point.
    """
    limit_f = tf.cast(limit, tf.float64)
    subs = tf.range(n, dtype=tf.float64) + 0.5  # [n]
    pos = bin_start[..., None] + subs * bin_size[..., None] / n  # [R, k, k, G, n]
    valid = tf.logical_and(pos >= -1.0, pos <= limit_f)  # NaN -> False
    pos = tf.where(tf.logical_and(valid, pos > 0.0), pos, tf.zeros_like(pos))
    low = tf.floor(pos)
    at_edge = low >= limit_f - 1.0
    low = tf.where(at_edge, limit_f - 1.0, low)
    high = tf.where(at_edge, low, low + 1.0)
    pos = tf.where(at_edge, low, pos)
    frac = pos - low
    weight = tf.stack([1.0 - frac, frac], axis=-1) * tf.cast(valid, tf.float64)[..., None]
    return tf.cast(tf.stack([low, high], axis=-1), tf.int32), weight


def deform_ps_roi_pool_tf(
    features,
    rois,
    offsets,
    *,
    output_size=7,
    spatial_scale=1.0 / 16,
    sampling_ratio=2,
    trans_std=0.1,
    name=None,
):
    """Deformable PS-RoI pooling with stock ops (same contract as ``deform_ps_roi_pool``).

    Args:
        features: [B, H, W, k*k*C] float32 / float64 (float16 / bfloat16 computed in float32).
        rois: [R, 5] (batch_index, y1, x1, y2, x2) input-image pixels; read as float32; no
            gradient.
        offsets: [R, k, k, 2] or [R, k, k, G, 2] normalized (dy, dx).
        output_size, spatial_scale, sampling_ratio, trans_std: as for the compiled op.
    Returns:
        [R, k, k, C] of features.dtype, differentiable w.r.t. features and offsets.
    """
    validate_pool_args(output_size, spatial_scale, sampling_ratio, trans_std)
    k, n = int(output_size), int(sampling_ratio)
    with tf.name_scope(name or "deform_ps_roi_pool_tf"):
        features = tf.convert_to_tensor(features, name="features")
        rois = tf.convert_to_tensor(rois, name="rois")
        offsets = tf.convert_to_tensor(offsets, name="offsets")
        if features.shape.rank is not None and features.shape.rank != 4:
            raise ValueError(f"features must be [B, H, W, k*k*C], got shape {features.shape}")
        if offsets.shape.rank == 4:
            offsets = offsets[:, :, :, None, :]
        if offsets.shape.rank != 5 or offsets.shape[3] is None or offsets.shape[4] != 2:
            raise ValueError(
                f"offsets must be [R, {k}, {k}, 2] or [R, {k}, {k}, G, 2], got "
                f"shape {offsets.shape}"
            )
        groups = int(offsets.shape[3])
        channels = features.shape[3] if features.shape.rank == 4 else None
        if channels is not None and channels % (k * k * groups) != 0:
            raise ValueError(
                f"features channels ({channels}) must be a multiple of "
                f"output_size**2 * G = {k * k} * {groups}"
            )
        input_dtype = features.dtype
        compute = tf.float64 if input_dtype == tf.float64 else tf.float32
        fshape = tf.shape(features, out_type=tf.int32)
        height, width = fshape[1], fshape[2]
        kk = k * k
        cg = fshape[3] // (kk * groups)

        rois32 = tf.cast(tf.stop_gradient(rois), tf.float32)
        batch_f = rois32[:, 0]
        bad = tf.logical_not(tf.logical_and(batch_f >= 0, batch_f < tf.cast(fshape[0], tf.float32)))
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [
                "rois[:, 0] (batch index) must be in [0, B) with B =",
                fshape[0],
                "; offending rows:",
                tf.reshape(tf.where(bad), [-1]),
            ],
            summarize=10,
        )
        with tf.control_dependencies([check] if check is not None else []):
            batch_index = tf.cast(tf.floor(batch_f), tf.int32)
        scale = float(np.float32(spatial_scale))
        gamma = float(np.float32(trans_std))

        scaled = tf.cast(rois32[:, 1:5], tf.float64) * scale - 0.5  # [R, 4]
        y1s, x1s, y2s, x2s = (t[:, None, None, None] for t in tf.unstack(scaled, 4, axis=1))
        yext, xext = y2s - y1s, x2s - x1s  # [R, 1, 1, 1]
        ybin, xbin = yext / k, xext / k
        off = tf.cast(offsets, tf.float64)  # [R, k, k, G, 2]
        steps = tf.range(k, dtype=tf.float64)
        ystart = (steps[None, :, None, None] * ybin + y1s) + off[..., 0] * gamma * yext
        xstart = (steps[None, None, :, None] * xbin + x1s) + off[..., 1] * gamma * xext
        rows, row_w = _axis_taps(ystart, ybin, n, height)  # [R, k, k, G, n, 2]
        cols, col_w = _axis_taps(xstart, xbin, n, width)

        # [R, k, k, G, n(y), 2(y), n(x), 2(x)] -> [R, k, k, G, P]
        row_base = (batch_index[:, None, None, None, None, None] * height + rows) * width
        pixel = row_base[..., None, None] + cols[..., None, None, :, :]
        bin_id = tf.reshape(tf.range(kk, dtype=tf.int32), [1, k, k, 1, 1, 1, 1, 1])
        group_id = tf.reshape(tf.range(groups, dtype=tf.int32), [1, 1, 1, groups, 1, 1, 1, 1])
        taps = 4 * n * n
        flat_idx = tf.reshape((pixel * kk + bin_id) * groups + group_id, [-1, k, k, groups, taps])
        weight = row_w[..., None, None] * col_w[..., None, None, :, :] / float(n * n)
        weight = tf.cast(tf.reshape(weight, [-1, k, k, groups, 1, taps]), compute)

        flat = tf.reshape(tf.cast(features, compute), [-1, cg])  # rows (pixel, bin, group)
        values = tf.gather(flat, flat_idx)  # [R, k, k, G, P, Cg]
        out = tf.matmul(weight, values)  # [R, k, k, G, 1, Cg]
        out = tf.reshape(out, [-1, k, k, groups * cg])
        out = tf.cast(out, input_dtype)
        num_rois = rois.shape[0] if rois.shape.rank == 2 else None
        out.set_shape([num_rois, k, k, None if channels is None else channels // kk])
        return out
