"""Position-sensitive RoI pooling from stock TensorFlow ops: the pure-TF twin of the compiled op.

R-FCN (Dai et al., NIPS 2016) sec. 2, "Position-sensitive score maps and Position-sensitive RoI
pooling"; PSRoIAlign as in Light-Head R-CNN / Deformable R-FCN (torchvision.ops.ps_roi_align).
This is the implementation the exported serving graph contains, so it uses only ops that tf2onnx
converts (opset 17): gather, matmul, arithmetic, floor/ceil, clip, cast, reshape,
where. No py_function, ragged tensors or loops over RoIs; every shape may be unknown inside
`tf.function`.

Shape shorthand:
    B  images in the batch            H, W  feature-map height and width (cells)
    kh, kw  output_size (kh x kw bins; an int k is k x k)    C  output channels per bin (classes)
    R  number of RoIs                 Dy, Dx  window cells per bilinear bin along y, x

Naming: `*_s` scaled float coordinates in feature-map cells, `*_r` rounded (avg mode),
`flat_*` row indices into a features tensor reshaped to [B*H*W*kh*kw, C] (or its integral image).

The arithmetic is docs/ARCHITECTURE.md's "PS-RoI pooling op" clause; channel layout is bin-major:
bin (i, j), class c reads channel (i*kw + j)*C + c, so the C values of one bin are contiguous and
one gather row of the [..., kh*kw, C]-reshaped map fetches them all.

avg (the paper's pooling):
    y1r = round(y1 * spatial_scale) half away from zero (C++ std::round: sign(x)*floor(|x|+0.5),
    never tf.round, which rounds half to even); roi_h = max(y2r - y1r, 1); bin i covers rows
    [y1r + floor(i*roi_h/kh), y1r + ceil((i+1)*roi_h/kh)) clipped to [0, H] (columns: kw);
    output = mean over the cells, 0 for an empty bin. Computed with an integral image
    (summed-area table, blocked cumulative sums: a constant cost per cell) in float64 and 4
    corner gathers per (RoI, bin, class), so the cost does not grow with the RoI's area; float64
    keeps the corner differences exact to ~1e-12 relative even for maps of large positive
    activations. The gradient (autodiff) gives each cell grad/area.
    A NaN/inf *feature* spreads (0 * NaN in the prefix sums) to every bin of its channel slice,
    more bins than a direct sum would touch; a diverged map is garbage either way.
bilinear (PSRoIAlign; torchvision.ops.ps_roi_align's rules, bin-major here):
    y1s = y1*spatial_scale - 0.5 (no rounding); bin_h = (y2s - y1s)/kh with NO minimum size
    (torchvision's ps_roi_align applies none; the 0.1 minimum some write belongs to Caffe's
    PSROIPooling); sy x sx points per bin: sy = sx = sampling_ratio when > 0, else adaptive
    sy = ceil(bin_h), sx = ceil(bin_w) per RoI clamped to [1, 128] (torchvision's rule); sample
    (iy, ix) of bin (i, j) at y = y1s + i*bin_h + (iy + 0.5)*bin_h/sy; a point with
    NOT(-1 <= y <= H and -1 <= x <= W) contributes 0; y < 0 -> 0; if floor(y) >= H-1 the point
    reads row H-1 alone (same for x); output = sum over the sy*sx points / (sy*sx). The rule is
    separable (valid = valid_y & valid_x, weight = wy * wx), so the geometry is computed per axis
    in float64 (each bin's taps summed per cell over a window of consecutive cells) and the
    window's Dy*Dx cells are gathered once per bin.

Interpretations the contract leaves open (shared with the op; see tests/helpers/psroi_reference.py):
    * batch index v = rois[r, 0] is valid iff 0 <= v < B (NaN invalid); the image is floor(v).
    * avg: a RoI with a non-finite coordinate pools to 0 (there is no rounding of NaN).
      bilinear: non-finite coordinates fail the in-range test and contribute 0.
    * H >= 1 and W >= 1 are required.
    * No gradient flows to `rois` (stop_gradient), like the compiled op.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

__all__ = ["ps_roi_pool_tf"]

_MODES = ("avg", "bilinear")
_FEATURE_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _output_grid(output_size):
    """(kh, kw) from an int k or a pair of ints; ValueError naming the value otherwise."""
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair
    ):
        raise ValueError(
            f"output_size must be an int k or a pair (kh, kw) of ints, got {output_size!r}"
        )
    if min(pair) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size!r}")
    return int(pair[0]), int(pair[1])


def _validate_static_args(output_size, spatial_scale, mode, sampling_ratio):
    """Checks the attrs; returns (kh, kw)."""
    grid = _output_grid(output_size)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral):
        raise ValueError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if (
        isinstance(spatial_scale, bool)
        or not isinstance(spatial_scale, numbers.Real)
        or not math.isfinite(spatial_scale)
        or spatial_scale <= 0
    ):
        raise ValueError(f"spatial_scale must be a finite number > 0, got {spatial_scale!r}")
    return grid


def _validate_static_shapes(features, rois, kk):
    """Raise ValueError for what the static shapes already show to be wrong (kk = kh*kw)."""
    if features.dtype not in _FEATURE_DTYPES:
        raise ValueError(
            f"features dtype must be one of {[d.name for d in _FEATURE_DTYPES]}, got "
            f"{features.dtype.name}"
        )
    if not rois.dtype.is_floating:
        raise ValueError(f"rois dtype must be floating, got {rois.dtype.name}")
    fshape = features.shape
    if fshape.rank is not None:
        if fshape.rank != 4:
            raise ValueError(f"features must be [B, H, W, kh*kw*C] (rank 4), got shape {fshape}")
        channels = fshape[3]
        if channels is not None and channels % kk != 0:
            raise ValueError(
                f"features channels ({channels}) must be a multiple of kh*kw = {kk} "
                f"(output_size); features shape {fshape}"
            )
        for axis, label in ((1, "height"), (2, "width")):
            if fshape[axis] is not None and fshape[axis] < 1:
                raise ValueError(f"features {label} must be >= 1, got shape {fshape}")
    rshape = rois.shape
    if rshape.rank is not None:
        if rshape.rank != 2 or (rshape[1] is not None and rshape[1] != 5):
            raise ValueError(
                f"rois must be [R, 5] rows (batch_index, y1, x1, y2, x2), got shape {rshape}"
            )


def _runtime_checks(features, rois, kk):
    """Run-time validation (InvalidArgumentError) of what the static shapes could not show.

    Returns:
        (features, rois, checks): the inputs, with their rank (and rois' width) pinned by
        tf.ensure_shape where the static shape did not know them, and the assertion ops that
        later computations must depend on (empty in eager mode, where asserts raise at once).
    """
    if features.shape.rank is None:
        features = tf.ensure_shape(
            features, [None, None, None, None], name="features_must_be_rank_4"
        )
    if rois.shape.rank is None or rois.shape[1] is None:
        rois = tf.ensure_shape(rois, [None, 5], name="rois_must_be_Rx5")
    fshape = tf.shape(features)
    checks = []
    if features.shape[3] is None:
        checks.append(
            tf.debugging.Assert(
                tf.equal(tf.math.floormod(fshape[3], kk), 0),
                [
                    f"features channels must be a multiple of kh*kw = {kk}, got features shape",
                    fshape,
                ],
                summarize=4,
                name="channels_multiple_of_k2",
            )
        )
    if features.shape[1] is None or features.shape[2] is None:
        checks.append(
            tf.debugging.Assert(
                tf.reduce_min(fshape[1:3]) >= 1,
                ["features height and width must be >= 1, got features shape", fshape],
                summarize=4,
                name="height_width_positive",
            )
        )
    batch_index = tf.cast(rois[:, 0], tf.float32)  # read as float32, like the op
    # Written as NOT(in range) so that NaN is caught too.
    bad = tf.logical_not(
        tf.logical_and(batch_index >= 0, batch_index < tf.cast(fshape[0], tf.float32))
    )
    checks.append(
        tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [
                "rois[:, 0] (batch index) must be in [0, B) with B =",
                fshape[0],
                "; offending rows:",
                tf.reshape(tf.where(bad), [-1]),
                "values:",
                tf.boolean_mask(batch_index, bad),
            ],
            summarize=10,
            name="batch_index_in_range",
        )
    )
    return features, rois, [c for c in checks if c is not None]  # eager asserts return None


def _round_half_away_from_zero(x):
    """C++ std::round: ties away from zero (tf.round is half-to-even)."""
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


_BLOCK = 8  # summed-area table: prefix sums within blocks of 8 cells, then across blocks
MAX_ADAPTIVE_SAMPLES = 128  # clamp of an adaptive sample-grid side, as in the compiled op


def _triangular(n, strict):
    """[n, n] float64 0/1 matrix with entry (y, h) = 1 if h < y (strict) or h <= y."""
    rows, cols = tf.range(n)[:, None], tf.range(n)[None, :]
    return tf.cast(cols < rows if strict else cols <= rows, tf.float64)


def _exclusive_prefix_axis1(x):
    """x [A, n, D] float64 -> [A, n+1, D] with row y = sum of x[:, :y] (row 0 is zero).

    Cumulative sums in blocks of _BLOCK cells: an inclusive prefix inside each block (one small
    [8, 8] triangular contraction: 8 multiply-adds per cell), then the block totals' exclusive
    prefix (n/8 per block, n/64 per cell) added to every cell of the block: a constant cost per
    cell for any practical n, instead of the n per cell of a full [n+1, n] prefix matrix.
    tf.cumsum would be the textbook choice, but TF's CPU Cumsum measured 2x slower than even
    the full prefix matrix at 38 x 63 x 1029 (float64, both axes; benchmarks/psroi_pool.py).
    """
    shape = tf.shape(x)
    a, n, d = shape[0], shape[1], shape[2]
    blocks = n // _BLOCK + 1  # covers the n + 1 output rows
    x = tf.pad(x, [[0, 0], [1, blocks * _BLOCK - n - 1], [0, 0]])  # leading zero: exclusive
    x = tf.reshape(x, [a, blocks, _BLOCK, d])
    local = tf.matmul(_triangular(_BLOCK, strict=False), x)  # [A, blocks, 8, D]
    carry = tf.matmul(_triangular(blocks, strict=True), local[:, :, _BLOCK - 1, :])
    out = tf.reshape(local + carry[:, :, None, :], [a, blocks * _BLOCK, d])
    return out[:, : n + 1]


def _integral_image(features):
    """Summed-area table S[b, y, x, ch] = sum of features[b, :y, :x, ch], float64 [B, H+1, W+1, CH].

    The zero first row and column are built in; float64 keeps the corner differences exact to
    ~1e-12 relative even for maps of large positive activations.
    """
    fshape = tf.shape(features, out_type=tf.int32)
    batch, height, width, channels = fshape[0], fshape[1], fshape[2], fshape[3]
    x = tf.reshape(tf.cast(features, tf.float64), [batch, height, width * channels])
    x = _exclusive_prefix_axis1(x)  # [B, H+1, W*CH]
    x = _exclusive_prefix_axis1(tf.reshape(x, [batch * (height + 1), width, channels]))
    return tf.reshape(x, [batch, height + 1, width + 1, channels])


def _avg_pool(features, rois, batch_index, grid, spatial_scale):
    """avg mode: integral image + 4 corner gathers.

    Args:
        features: [B, H, W, kh*kw*C] float32/float64.
        rois: [R, 5] float32 (batch_index, y1, x1, y2, x2), input-image pixels.
        batch_index: [R] int32, validated.
        grid: (kh, kw).
        spatial_scale: Python float, already rounded to float32.
    Returns:
        [R, kh, kw, C] float64.
    """
    fshape = tf.shape(features, out_type=tf.int32)
    height, width, channels = fshape[1], fshape[2], fshape[3]
    kh, kw = grid
    kk = kh * kw
    num_out = channels // kk

    flat_integral = tf.reshape(_integral_image(features), [-1, num_out])  # [B*(H+1)*(W+1)*kk, C]

    # The product in float32, as the compiled op's roundf(c * scale): same rounding at ties.
    scaled = tf.cast(rois[:, 1:5] * spatial_scale, tf.float64)  # [R, 4]
    finite = tf.reduce_all(tf.math.is_finite(scaled), axis=1)  # [R]
    scaled = tf.where(finite[:, None], scaled, tf.zeros_like(scaled))
    rounded = _round_half_away_from_zero(scaled)
    y1_r, x1_r, y2_r, x2_r = tf.unstack(rounded, num=4, axis=1)  # each [R]
    roi_h = tf.maximum(y2_r - y1_r, 1.0)
    roi_w = tf.maximum(x2_r - x1_r, 1.0)

    # floor/ceil of (integer * integer / k) are exact in float64 (a non-integer quotient is at
    # least 1/k away from an integer), so this matches the op's integer arithmetic.
    def bounds(start, size, k, limit):
        steps = tf.range(k, dtype=tf.float64)  # [k]
        lo = start[:, None] + tf.floor(steps[None, :] * size[:, None] / k)
        hi = start[:, None] + tf.math.ceil((steps[None, :] + 1.0) * size[:, None] / k)
        limit = tf.cast(limit, tf.float64)
        return tf.clip_by_value(lo, 0.0, limit), tf.clip_by_value(hi, 0.0, limit)  # [R, k]

    h_lo, h_hi = bounds(y1_r, roi_h, kh, height)
    w_lo, w_hi = bounds(x1_r, roi_w, kw, width)
    area = (h_hi - h_lo)[:, :, None] * (w_hi - w_lo)[:, None, :]  # [R, kh, kw]

    # 1/area per bin; 0 for an empty bin or a RoI with non-finite coordinates.
    keep = tf.logical_and(finite[:, None, None], area > 0)
    inv_area = tf.where(keep, 1.0 / tf.maximum(area, 1.0), tf.zeros_like(area))  # [R, kh, kw]

    # flat row of integral corner (b, y, x) for bin (i, j): ((b*(H+1) + y)*(W+1) + x)*kk + i*kw+j
    h_lo, h_hi, w_lo, w_hi = (tf.cast(t, tf.int32) for t in (h_lo, h_hi, w_lo, w_hi))
    bin_id = tf.reshape(tf.range(kk, dtype=tf.int32), [1, kh, kw])
    image_row = batch_index[:, None] * (height + 1)  # [R, 1]

    def corner(rows, cols):
        """S at (rows[r, i], cols[r, j]) on bin (i, j)'s channel slice: [R, kh, kw, C]."""
        pixel = ((image_row + rows) * (width + 1))[:, :, None] + cols[:, None, :]  # [R, kh, kw]
        return tf.gather(flat_integral, pixel * kk + bin_id)

    # Four separate gathers (not one gather + slicing): slicing a [R, kh, kw, 4, C] tensor makes
    # autodiff materialize four dense StridedSliceGrad tensors of that size.
    box_sum = (corner(h_hi, w_hi) - corner(h_lo, w_hi)) - (
        corner(h_hi, w_lo) - corner(h_lo, w_lo)
    )  # [R, kh, kw, C] float64
    return box_sum * inv_area[..., None]


def _sample_counts(bin_size, sampling_ratio):
    """Sample points per bin side: [R] float64, and their maximum (int32 scalar, >= 1).

    sampling_ratio > 0: that many; <= 0: adaptive, ceil(bin_size) clamped to
    [1, MAX_ADAPTIVE_SAMPLES] (torchvision ps_roi_align's ceil(roi_height / pooled_height); a
    zero, reversed or NaN bin size takes 1)."""
    if sampling_ratio > 0:
        count = tf.fill(tf.shape(bin_size), tf.constant(float(sampling_ratio), tf.float64))
        return count, tf.constant(sampling_ratio, tf.int32)
    count = tf.where(
        bin_size > 1.0,
        tf.minimum(tf.math.ceil(bin_size), float(MAX_ADAPTIVE_SAMPLES)),
        tf.ones_like(bin_size),
    )
    most = tf.maximum(tf.cast(tf.reduce_max(tf.concat([count, [1.0]], 0)), tf.int32), 1)
    return count, most


def _bilinear_axis(start, size, k, sampling_ratio, limit):
    """Per-axis PSRoIAlign weights of each bin over a window of consecutive cells.

    The bilinear rule is separable (a point is valid iff its row and its column are; its weight
    is wy * wx), so a bin is sum_dy sum_dx Wy[dy] * Wx[dx] * features[row dy, col dx] with, per
    axis, the taps of the bin's sample points summed per cell over a window starting at the
    lowest tapped cell. The window length D is the largest over all RoIs and bins.

    Args:
        start, size: [R] float64 scaled RoI start and extent (cells) along this axis.
        k: bins along this axis.
        sampling_ratio: points per bin side, <= 0 for adaptive.
        limit: int32 scalar, H or W.
    Returns:
        index: [R, k, D] int32 cells of the window, clipped into [0, limit-1].
        weight: [R, k, D] float64 summed tap weights / (points on this axis); 0 outside.
    """
    limit_f = tf.cast(limit, tf.float64)
    bin_size = size / k  # [R]
    count, most = _sample_counts(bin_size, sampling_ratio)  # [R], scalar
    bins = tf.range(k, dtype=tf.float64)[None, :, None]  # [1, k, 1]
    points = tf.range(most, dtype=tf.float64)[None, None, :]  # [1, 1, n]
    step = (bin_size / count)[:, None, None]
    pos = (start[:, None, None] + bins * bin_size[:, None, None]) + (points + 0.5) * step
    # NOT(in range) so NaN is out; out-of-range positions become 0 before any int cast.
    valid = tf.logical_and(
        tf.logical_and(pos >= -1.0, pos <= limit_f), points < count[:, None, None]
    )  # [R, k, n]
    pos = tf.where(valid, tf.maximum(pos, 0.0), tf.zeros_like(pos))
    low = tf.floor(pos)
    at_edge = low >= limit_f - 1.0
    low = tf.where(at_edge, limit_f - 1.0, low)
    high = tf.where(at_edge, low, low + 1.0)
    pos = tf.where(at_edge, low, pos)
    frac = pos - low
    weight = tf.stack([1.0 - frac, frac], axis=-1) * tf.cast(valid, tf.float64)[..., None]
    cells = tf.cast(tf.stack([low, high], axis=-1), tf.int32)  # [R, k, n, 2]

    big = tf.fill(tf.shape(low), limit_f)
    base = tf.reduce_min(tf.where(valid, low, big), axis=2)  # [R, k]; limit if none valid
    base = tf.cast(tf.where(base >= limit_f, tf.zeros_like(base), base), tf.int32)
    offset = cells - base[:, :, None, None]  # [R, k, n, 2], in [0, D) for valid taps
    span = tf.where(valid[..., None], offset, tf.zeros_like(offset))
    window = tf.reduce_max(tf.concat([tf.reshape(span, [-1]), [0]], 0)) + 1  # D >= 1
    # One-hot by comparison (tf2onnx converts tf.one_hot of rank-1 indices only).
    one_hot = tf.cast(tf.equal(offset[..., None], tf.range(window)), tf.float64)  # [R,k,n,2,D]
    summed = tf.reduce_sum(weight[..., None] * one_hot, axis=[2, 3]) / count[:, None, None]
    index = tf.minimum(base[:, :, None] + tf.range(window)[None, None, :], limit - 1)
    return index, summed


def _bilinear_pool(features, rois, batch_index, grid, spatial_scale, sampling_ratio, compute_dtype):
    """bilinear mode: Dy*Dx window cells per bin gathered on the bin's channel slice.

    Returns [R, kh, kw, C]."""
    fshape = tf.shape(features, out_type=tf.int32)
    height, width, channels = fshape[1], fshape[2], fshape[3]
    kh, kw = grid
    kk = kh * kw
    num_out = channels // kk
    flat_features = tf.reshape(features, [-1, num_out])  # [B*H*W*kk, C]

    scaled = tf.cast(rois[:, 1:5], tf.float64) * spatial_scale - 0.5  # [R, 4], no rounding
    y1_s, x1_s, y2_s, x2_s = tf.unstack(scaled, num=4, axis=1)
    rows, row_w = _bilinear_axis(y1_s, y2_s - y1_s, kh, sampling_ratio, height)  # [R, kh, Dy]
    cols, col_w = _bilinear_axis(x1_s, x2_s - x1_s, kw, sampling_ratio, width)  # [R, kw, Dx]

    # Combine to [R, kh(i), kw(j), Dy, Dx].
    row_base = (batch_index[:, None, None] * height + rows) * width  # [R, kh, Dy]
    pixel = row_base[:, :, None, :, None] + cols[:, None, :, None, :]
    bin_id = tf.reshape(tf.range(kk, dtype=tf.int32), [1, kh, kw, 1, 1])
    # Explicit sizes, no -1: R may be 0 (ONNX cannot infer a -1 next to a zero dimension).
    num_rois, taps = tf.shape(rois)[0], tf.shape(rows)[2] * tf.shape(cols)[2]
    flat_idx = tf.reshape(pixel * kk + bin_id, [num_rois, kh, kw, taps])  # [R, kh, kw, P]
    weight = row_w[:, :, None, :, None] * col_w[:, None, :, None, :]
    weight = tf.reshape(weight, [num_rois, kh, kw, 1, taps])  # [R, kh, kw, 1, P]

    values = tf.gather(flat_features, flat_idx)  # [R, kh, kw, P, C]
    # A batched [1, P] x [P, C] matmul: about half the time of multiply + reduce_sum here.
    return tf.squeeze(tf.matmul(tf.cast(weight, compute_dtype), values), axis=3)


def ps_roi_pool_tf(
    features,
    rois,
    *,
    output_size=7,
    spatial_scale=1.0 / 16,
    mode="avg",
    sampling_ratio=2,
    name=None,
):
    """Position-sensitive RoI pooling (R-FCN sec. 2) with stock TF ops, both modes.

    Args:
        features: [B, H, W, kh*kw*C] float32 (float16/bfloat16 are computed in float32 and the
            result cast back; float64 is computed in float64). NHWC, bin-major channels:
            bin (i, j), class c is channel (i*kw + j)*C + c. B, H, W, C may be unknown.
        rois: [R, 5] floating, rows (batch_index, y1, x1, y2, x2); coordinates in input-image
            pixels (yxyx), batch_index in [0, B). R may be 0 or unknown. Not differentiated.
            Read as float32, like the compiled op.
        output_size: k (k x k bins) or (kh, kw): bins along y and x (ints >= 1).
        spatial_scale: feature-map cells per input pixel (1/16 for a stride-16 map), > 0;
            used as its float32 value (the compiled op's attr type).
        mode: "avg" (R-FCN's average over integer cells) or "bilinear" (PSRoIAlign).
        sampling_ratio: sample points per bin side (bilinear only; ignored by avg); <= 0 means
            adaptive: ceil(bin size in cells) per RoI and axis, clamped to [1, 128].
        name: optional name scope.

    Returns:
        [R, kh, kw, C] tensor of features.dtype; static shape [R or None, kh, kw, C or None].
        Differentiable with respect to `features`.

    Raises:
        ValueError: bad arguments or statically wrong shapes/dtypes (message names the value).
        tf.errors.InvalidArgumentError: at run time, a batch index outside [0, B) (message lists
            the rows and values), or a dynamic shape that breaks the rules above.
    """
    grid = _validate_static_args(output_size, spatial_scale, mode, sampling_ratio)
    kh, kw = grid
    sr = int(sampling_ratio)
    with tf.name_scope(name or "ps_roi_pool_tf"):
        features = tf.convert_to_tensor(features, name="features")
        rois = tf.convert_to_tensor(rois, name="rois")
        _validate_static_shapes(features, rois, kh * kw)
        input_dtype = features.dtype
        compute_dtype = tf.float64 if input_dtype == tf.float64 else tf.float32

        features, rois, checks = _runtime_checks(features, rois, kh * kw)
        with tf.control_dependencies(checks):
            # The compiled op has no gradient w.r.t. rois; neither has the twin.
            rois32 = tf.cast(tf.stop_gradient(rois), tf.float32)
            feats = tf.cast(features, compute_dtype)
        batch_index = tf.cast(tf.floor(rois32[:, 0]), tf.int32)  # validated: in [0, B)
        # The compiled op's spatial_scale is a float32 attr; use the same value.
        scale = float(np.float32(spatial_scale))

        if mode == "avg":
            out = _avg_pool(feats, rois32, batch_index, grid, scale)
        else:
            out = _bilinear_pool(feats, rois32, batch_index, grid, scale, sr, compute_dtype)
        out = tf.cast(out, input_dtype)

        channels = features.shape[3] if features.shape.rank == 4 else None
        num_rois = rois.shape[0] if rois.shape.rank == 2 else None
        out.set_shape([num_rois, kh, kw, None if channels is None else channels // (kh * kw)])
        return out
