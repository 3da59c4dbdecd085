"""Independent float64 NumPy reference for position-sensitive RoI pooling.

Written straight from the "PS-RoI pooling op" clause of docs/ARCHITECTURE.md with plain loops
(clarity over speed); it shares no code with `rfcn_tf/ops/psroi_pool_tf.py` or the compiled op, and is pinned by
hand-computed cases in `tests/ops/test_psroi_reference.py`.

Shape shorthand:
    B  images in the batch           H, W    feature-map height and width (cells)
    kh, kw  output_size (kh x kw bins; an int k means k x k)
    C  output channels (classes); features have kh*kw*C     R  number of RoIs

Channel layout (bin-major): bin (i, j), class c reads feature channel (i*kw + j)*C + c.

Both functions reduce to one primitive, `_bin_contributions`, which lists for one RoI bin the
feature cells it reads and the weight of each: out[r, i, j, c] = sum_{(h, w, wt)} wt *
features[b, h, w, (i*kw + j)*C + c]. The forward pass sums with those weights and the gradient
scatters `wt * grad_output` back, so forward and backward cannot disagree on the geometry.

Rules (docs/ARCHITECTURE.md "PS-RoI pooling op"; every case it leaves open is interpreted here):

avg (R-FCN sec. 2, "Position-sensitive score maps"; torchvision ps_roi_pool geometry):
    y1r = round(y1 * spatial_scale) with round half away from zero (C++ std::round), same x1r,
    y2r, x2r; roi_h = max(y2r - y1r, 1), roi_w = max(x2r - x1r, 1); bin i covers rows
    [y1r + floor(i*roi_h/kh), y1r + ceil((i+1)*roi_h/kh)) clipped to [0, H] (floor/ceil of an exact
    rational: computed with integer arithmetic); same for columns (kw bins); output = mean over
    the cells, 0 for an empty bin. Each cell's weight is 1/area. sampling_ratio is ignored.
bilinear (PSRoIAlign; torchvision.ops.ps_roi_align rules, bin-major channels):
    y1s = y1 * spatial_scale - 0.5 (no rounding), y2s likewise; roi_h = y2s - y1s with NO minimum
    (torchvision's ps_roi_align CPU and CUDA kernels apply none; a reversed RoI, y2 < y1, gives a
    negative bin size and samples "backwards", exactly as torchvision does); bin_h = roi_h / kh,
    bin_w = roi_w / kw; the sample grid is sy x sx points per bin: sy = sx = sampling_ratio when
    it is > 0; adaptive when it is <= 0: sy = ceil(bin_h), sx = ceil(bin_w) per RoI
    (torchvision's ceil(roi_height / pooled_height)), clamped to [1, 128] (torchvision has no
    clamp: there a zero or reversed RoI gets no samples and pools 0 / count or NaN; a NaN size
    counts as 1 here); sample (iy, ix) of bin (i, j) sits at y = y1s + i*bin_h +
    (iy + 0.5)*bin_h/sy (same for x);
    a point with NOT(-1 <= y <= H and -1 <= x <= W) contributes 0 (NaN takes this branch); else
    y <- max(y, 0); y_low = floor(y); if y_low >= H-1 then y_low = y_high = H-1 and y = y_low,
    else y_high = y_low + 1 (same for x); weights (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly*lx with
    ly = y - y_low, lx = x - x_low; output = sum over the sy*sx points / (sy*sx).

Batch index: rois[r, 0] = v is valid iff 0 <= v < B (NaN is invalid); the image is floor(v)
(= C++ truncation for v >= 0). Invalid values raise ValueError naming the row and value.
Non-finite coordinates (NaN, +-inf) in avg mode make the whole RoI output 0 (there is no sane
rounding of them); in bilinear mode they fall out of the in-range test naturally (output 0).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MAX_ADAPTIVE_SAMPLES",
    "adaptive_samples",
    "ps_roi_pool_reference",
    "ps_roi_pool_reference_grad",
    "round_half_away_from_zero",
]

_MODES = ("avg", "bilinear")
MAX_ADAPTIVE_SAMPLES = 128  # the clamp of an adaptive grid side (ops use the same)


def adaptive_samples(bin_size: float) -> int:
    """Adaptive sample count along one axis: ceil(bin_size) clamped to [1, 128]; NaN -> 1."""
    if not bin_size > 1.0:  # <= 1, reversed, zero or NaN
        return 1
    if bin_size >= MAX_ADAPTIVE_SAMPLES:
        return MAX_ADAPTIVE_SAMPLES
    return int(math.ceil(bin_size))


def output_grid(output_size):
    """(kh, kw) from an int k or a pair; ValueError otherwise."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or (kh, kw), got {output_size!r}")
        kh, kw = (int(v) for v in output_size)
    else:
        kh = kw = int(output_size)
    if kh < 1 or kw < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}")
    return kh, kw


def round_half_away_from_zero(x: float) -> float:
    """C++ `std::round` on one float: ties go away from zero (2.5 -> 3, -2.5 -> -3).

    `np.round`/`tf.round` round ties to even and `floor(x + 0.5)` rounds -2.5 to -2: neither is it.
    """
    return math.copysign(math.floor(abs(x) + 0.5), x)


def _check_args(features_shape, rois, output_size, mode, sampling_ratio):
    if len(features_shape) != 4:
        raise ValueError(f"features must be [B, H, W, kh*kw*C], got shape {tuple(features_shape)}")
    rois = np.asarray(rois, dtype=np.float64)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [R, 5], got shape {rois.shape}")
    kh, kw = output_grid(output_size)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    channels = features_shape[3]
    if channels % (kh * kw) != 0:
        raise ValueError(f"features channels ({channels}) must be a multiple of kh*kw ({kh * kw})")
    batch = features_shape[0]
    for r in range(rois.shape[0]):
        v = rois[r, 0]
        if not (v >= 0 and v < batch):
            raise ValueError(f"rois[{r}, 0] (batch index) = {v} is outside [0, {batch})")
    return rois, (kh, kw), channels // (kh * kw)


def _avg_bin_contributions(roi, i, j, grid, height, width, spatial_scale):
    """Cells and weights of avg bin (i, j): list of (h, w, 1/area); empty list for an empty bin."""
    coords = [float(v) for v in roi[1:]]
    if not all(math.isfinite(v) for v in coords):
        return []
    y1r, x1r, y2r, x2r = (int(round_half_away_from_zero(v * spatial_scale)) for v in coords)
    roi_h = max(y2r - y1r, 1)
    roi_w = max(x2r - x1r, 1)
    # floor(a/k) and ceil(a/k) of non-negative integers, exactly (Python // floors).
    kh, kw = grid
    h_start = y1r + (i * roi_h) // kh
    h_end = y1r + -((-(i + 1) * roi_h) // kh)
    w_start = x1r + (j * roi_w) // kw
    w_end = x1r + -((-(j + 1) * roi_w) // kw)
    h_start, h_end = min(max(h_start, 0), height), min(max(h_end, 0), height)
    w_start, w_end = min(max(w_start, 0), width), min(max(w_end, 0), width)
    area = (h_end - h_start) * (w_end - w_start)
    if area <= 0:
        return []
    cells = []
    for h in range(h_start, h_end):
        for w in range(w_start, w_end):
            cells.append((h, w, 1.0 / area))
    return cells


def _bilinear_point(y, x, height, width):
    """The up to 4 (h, w, weight) neighbours of point (y, x) under torchvision's border rules."""
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return []
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(math.floor(y))
    x_low = int(math.floor(x))
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return [
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    ]


def _bilinear_bin_contributions(roi, i, j, grid, height, width, spatial_scale, sampling_ratio):
    """Cells and weights of bilinear bin (i, j): sy*sx points, each weight divided by sy*sx."""
    y1s = float(roi[1]) * spatial_scale - 0.5
    x1s = float(roi[2]) * spatial_scale - 0.5
    y2s = float(roi[3]) * spatial_scale - 0.5
    x2s = float(roi[4]) * spatial_scale - 0.5
    kh, kw = grid
    bin_h = (y2s - y1s) / kh  # no minimum size: torchvision ps_roi_align applies none
    bin_w = (x2s - x1s) / kw
    if sampling_ratio > 0:
        sy = sx = sampling_ratio
    else:
        sy, sx = adaptive_samples(bin_h), adaptive_samples(bin_w)
    count = float(sy * sx)
    cells = []
    for iy in range(sy):
        y = y1s + i * bin_h + (iy + 0.5) * bin_h / sy
        for ix in range(sx):
            x = x1s + j * bin_w + (ix + 0.5) * bin_w / sx
            for h, w, wt in _bilinear_point(y, x, height, width):
                cells.append((h, w, wt / count))
    return cells


def _bin_contributions(roi, i, j, grid, height, width, spatial_scale, mode, sampling_ratio):
    if mode == "avg":
        return _avg_bin_contributions(roi, i, j, grid, height, width, spatial_scale)
    return _bilinear_bin_contributions(
        roi, i, j, grid, height, width, spatial_scale, sampling_ratio
    )


def _all_contributions(rois, grid, num_out, height, width, spatial_scale, mode, sampling_ratio):
    """Every (r, i, j, b, h, w, channels, weight) term of the pooling, which is linear in the
    features: output[r, i, j, :] = sum of weight * features[b, h, w, channels] over the terms.
    Forward and gradient both walk these terms (one reads, the other scatters)."""
    kh, kw = grid
    for r in range(rois.shape[0]):
        b = int(math.floor(rois[r, 0]))
        for i in range(kh):
            for j in range(kw):
                c0 = (i * kw + j) * num_out  # bin-major: the bin's C channels are contiguous
                for h, w, wt in _bin_contributions(
                    rois[r],
                    i,
                    j,
                    grid,
                    height,
                    width,
                    float(spatial_scale),
                    mode,
                    int(sampling_ratio),
                ):
                    yield r, i, j, b, h, w, slice(c0, c0 + num_out), wt


def ps_roi_pool_reference(features, rois, output_size, spatial_scale, mode="avg", sampling_ratio=2):
    """PS-RoI pooling forward, float64, plain loops.

    Args:
        features: array-like [B, H, W, kh*kw*C] (any float dtype; computed in float64).
        rois: array-like [R, 5], rows (batch_index, y1, x1, y2, x2) in input-image pixels.
        output_size: k (k x k bins) or (kh, kw).
        spatial_scale: feature-map cells per input pixel (1/16 for stride 16).
        mode: "avg" or "bilinear" (see the module docstring for the exact rules).
        sampling_ratio: sample points per bin side (bilinear only); <= 0: adaptive.

    Returns:
        np.ndarray float64 [R, kh, kw, C]; bin (i, j), class c reads channel (i*kw + j)*C + c.
    """
    features = np.asarray(features, dtype=np.float64)
    rois, grid, num_out = _check_args(features.shape, rois, output_size, mode, sampling_ratio)
    _, height, width, _ = features.shape
    out = np.zeros((rois.shape[0], *grid, num_out), dtype=np.float64)
    for r, i, j, b, h, w, channels, wt in _all_contributions(
        rois, grid, num_out, height, width, spatial_scale, mode, sampling_ratio
    ):
        out[r, i, j, :] += wt * features[b, h, w, channels]
    return out


def ps_roi_pool_reference_grad(
    features_shape, rois, grad_output, output_size, spatial_scale, mode="avg", sampling_ratio=2
):
    """Gradient of `ps_roi_pool_reference` w.r.t. features (it is linear in them), float64.

    Args:
        features_shape: (B, H, W, kh*kw*C).
        rois: [R, 5] as in the forward.
        grad_output: [R, kh, kw, C], d loss / d output.
        output_size, spatial_scale, mode, sampling_ratio: as in the forward.

    Returns:
        np.ndarray float64 of shape features_shape: each feature cell accumulates
        weight * grad_output over every (RoI, bin, class) that reads it.
    """
    features_shape = tuple(int(d) for d in features_shape)
    rois, grid, num_out = _check_args(features_shape, rois, output_size, mode, sampling_ratio)
    grad_output = np.asarray(grad_output, dtype=np.float64)
    expected = (rois.shape[0], *grid, num_out)
    if grad_output.shape != expected:
        raise ValueError(f"grad_output must be {expected}, got {grad_output.shape}")
    _, height, width, _ = features_shape
    grad = np.zeros(features_shape, dtype=np.float64)
    for r, i, j, b, h, w, channels, wt in _all_contributions(
        rois, grid, num_out, height, width, spatial_scale, mode, sampling_ratio
    ):
        grad[b, h, w, channels] += wt * grad_output[r, i, j, :]
    return grad
