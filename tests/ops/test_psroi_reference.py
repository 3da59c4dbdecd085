"""Pins the NumPy PS-RoI pooling reference (psroi_reference.py) to hand-computed numbers.

The reference is what both the compiled op and the pure-TF twin are tested against, so it gets its
own tests: every expected value below was computed by hand from the rules of docs/ARCHITECTURE.md ("PS-RoI pooling op") on a 4x4 map
f[h, w] = 4*h + w (channel q adds 100*q so a wrong channel is visible).
"""

import numpy as np
import pytest
from helpers.psroi_reference import (
    ps_roi_pool_reference,
    ps_roi_pool_reference_grad,
    round_half_away_from_zero,
)

RAMP = np.arange(16, dtype=np.float64).reshape(4, 4)  # RAMP[h, w] = 4h + w


def _ramp_features(k, num_out=1, batch=1):
    """[batch, 4, 4, k*k*num_out]: channel q = RAMP + 100*q (+ 1000*image)."""
    q = np.arange(k * k * num_out, dtype=np.float64)
    feats = RAMP[None, :, :, None] + 100.0 * q[None, None, None, :]
    feats = np.repeat(feats, batch, axis=0)
    return feats + 1000.0 * np.arange(batch, dtype=np.float64)[:, None, None, None]


@pytest.mark.parametrize(
    "x, expected",
    [
        (2.5, 3.0),
        (-2.5, -3.0),
        (0.5, 1.0),
        (-0.5, -1.0),
        (1.4999, 1.0),
        (-1.4999, -1.0),
        (3.0, 3.0),
        (0.0, 0.0),
    ],
)
def test_round_half_away_from_zero(x, expected):
    assert round_half_away_from_zero(x) == expected


def test_avg_k1_plain_box_mean():
    # rows [0, 3), cols [0, 3): mean of {0,1,2,4,5,6,8,9,10} = 45/9
    out = ps_roi_pool_reference(_ramp_features(1), [[0, 0, 0, 3, 3]], 1, 1.0)
    assert out.shape == (1, 1, 1, 1)
    assert out[0, 0, 0, 0] == pytest.approx(5.0)


def test_avg_k2_quadrants_read_their_own_channel():
    # roi_h = roi_w = 4: bins are the 2x2 quadrants; bin (i, j) reads channel i*2 + j.
    out = ps_roi_pool_reference(_ramp_features(2), [[0, 0, 0, 4, 4]], 2, 1.0)
    np.testing.assert_allclose(out[0, :, :, 0], [[2.5, 104.5], [210.5, 312.5]])


def test_avg_k2_odd_size_bins_overlap():
    # roi_h = 3: bin 0 rows [floor(0), ceil(1.5)) = [0, 2), bin 1 rows [floor(1.5), ceil(3)) = [1, 3)
    out = ps_roi_pool_reference(_ramp_features(2), [[0, 0, 0, 3, 3]], 2, 1.0)
    np.testing.assert_allclose(out[0, :, :, 0], [[2.5, 100 + 3.5], [200 + 6.5, 300 + 7.5]])


def test_avg_rounds_half_away_from_zero():
    # scale 0.5: y1 = 0.5 -> 1, y2 = 2.5 -> 3 (half-to-even would give 2), x1 = -0.5 -> -1
    # (floor(x + 0.5) would give 0), x2 = 2.5 -> 3. roi_h = 2: rows [1, 2), [2, 3);
    # roi_w = 4: cols [-1, 1) -> [0, 1) and [1, 3).
    out = ps_roi_pool_reference(_ramp_features(2), [[0, 1, -1, 5, 5]], 2, 0.5)
    np.testing.assert_allclose(out[0, :, :, 0], [[4.0, 105.5], [208.0, 309.5]])


def test_avg_bin_major_channel_layout():
    # k = 2, C = 2: bin (i, j) class c must read channel (i*2 + j)*2 + c (constant maps).
    feats = np.broadcast_to(np.arange(8, dtype=np.float64), (1, 4, 4, 8))
    out = ps_roi_pool_reference(feats, [[0, 0, 0, 4, 4]], 2, 1.0)
    expected = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    np.testing.assert_allclose(out[0], expected)


def test_avg_outside_degenerate_and_batch_index():
    feats = _ramp_features(1, batch=2)
    rois = [
        [0, 100, 100, 120, 120],  # fully outside: every bin empty -> 0
        [0, -2, -2, 1, 1],  # partly outside: rows/cols [-2, 1) -> [0, 1): cell (0, 0)
        [0, 2, 2, 1, 1],  # reversed: roi_h = max(-1, 1) = 1 -> cell (2, 2) = 10
        [1, 0, 0, 2, 2],  # image 1: mean{0,1,4,5} + 1000
        [1.7, 0, 0, 1, 1],  # batch index 1.7 -> image 1
    ]
    out = ps_roi_pool_reference(feats, rois, 1, 1.0)[:, 0, 0, 0]
    np.testing.assert_allclose(out, [0.0, 0.0, 10.0, 1002.5, 1000.0])


def test_avg_nonfinite_roi_gives_zero():
    out = ps_roi_pool_reference(
        _ramp_features(1), [[0, np.nan, 0, 2, 2], [0, 0, 0, np.inf, 2]], 1, 1.0
    )
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize(
    "roi, sr, expected",
    [
        # y1s = 0.5, y2s = 2.5: one sample at (1.5, 1.5) of a linear map -> 4*1.5 + 1.5
        ([0, 1, 1, 3, 3], 1, 7.5),
        # sample y = 3.7 >= H-1 = 3 reads row 3 alone: f(3, 1.5) = 13.5
        ([0, 3.2, 1, 5.2, 3], 1, 13.5),
        # sample y = -1.5 < -1: contributes 0
        ([0, -2, 1, 0, 3], 1, 0.0),
        # sample y = -0.5 in [-1, 0): clamped to row 0: f(0, 1.5) = 1.5
        ([0, -1, 1, 1, 3], 1, 1.5),
        # sr = 2: samples y in {3, 5}, x in {1, 2}; y = 5 > H = 4 contributes 0 but still counts:
        # (13 + 14 + 0 + 0) / 4
        ([0, 2.5, 1, 6.5, 3], 2, 6.75),
    ],
)
def test_bilinear_hand_cases(roi, sr, expected):
    out = ps_roi_pool_reference(
        _ramp_features(1), [roi], 1, 1.0, mode="bilinear", sampling_ratio=sr
    )
    assert out[0, 0, 0, 0] == pytest.approx(expected)


def test_bilinear_weights_on_a_delta_map():
    # f = delta at (1, 2); sample at (1.25, 1.5): y_low = 1, ly = .25; x_low = 1, lx = .5;
    # weight of (y_low, x_high) = (1 - ly) * lx = 0.375
    feats = np.zeros((1, 4, 4, 1))
    feats[0, 1, 2, 0] = 1.0
    out = ps_roi_pool_reference(
        feats, [[0, 0.75, 1, 2.75, 3]], 1, 1.0, mode="bilinear", sampling_ratio=1
    )
    assert out[0, 0, 0, 0] == pytest.approx(0.375)
    grad = ps_roi_pool_reference_grad(
        feats.shape,
        [[0, 0.75, 1, 2.75, 3]],
        np.ones((1, 1, 1, 1)),
        1,
        1.0,
        mode="bilinear",
        sampling_ratio=1,
    )
    expected = np.zeros((4, 4))
    expected[1, 1], expected[1, 2], expected[2, 1], expected[2, 2] = 0.375, 0.375, 0.125, 0.125
    np.testing.assert_allclose(grad[0, :, :, 0], expected)


def test_avg_grad_spreads_grad_over_area():
    grad = ps_roi_pool_reference_grad(
        (1, 4, 4, 1), [[0, 1, 1, 3, 3]], np.full((1, 1, 1, 1), 8.0), 1, 1.0
    )
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 2.0
    np.testing.assert_allclose(grad[0, :, :, 0], expected)


@pytest.mark.parametrize("mode", ["avg", "bilinear"])
def test_grad_is_the_adjoint_of_the_forward(mode):
    # The pooling is linear in the features: <pool(x), g> == <x, grad(g)>.
    rng = np.random.default_rng(0)
    k, num_out = 3, 2
    feats = rng.normal(size=(2, 5, 6, k * k * num_out))
    rois = np.column_stack([rng.integers(0, 2, 7), rng.uniform(-20, 90, (7, 4))])
    g = rng.normal(size=(7, k, k, num_out))
    out = ps_roi_pool_reference(feats, rois, k, 1 / 16 * 2, mode=mode)
    grad = ps_roi_pool_reference_grad(feats.shape, rois, g, k, 1 / 16 * 2, mode=mode)
    assert np.sum(out * g) == pytest.approx(np.sum(feats * grad), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=np.zeros((4, 4, 4)), rois=np.zeros((1, 5))), r"features .*\(4, 4, 4\)"),
        (dict(features=np.zeros((1, 4, 4, 4)), rois=np.zeros((1, 4))), r"rois .*\(1, 4\)"),
        (dict(features=np.zeros((1, 4, 4, 5)), rois=np.zeros((1, 5))), r"channels \(5\)"),
        (dict(features=np.zeros((1, 4, 4, 4)), rois=[[1, 0, 0, 1, 1]]), r"rois\[0, 0\].* = 1"),
        (dict(features=np.zeros((1, 4, 4, 4)), rois=[[np.nan, 0, 0, 1, 1]]), r"= nan"),
        (dict(features=np.zeros((1, 4, 4, 4)), rois=np.zeros((1, 5)), mode="max"), "'max'"),
        (dict(features=np.zeros((1, 4, 4, 4)), rois=np.zeros((1, 5)), output_size=0), "got 0"),
        (
            dict(features=np.zeros((1, 4, 4, 4)), rois=np.zeros((1, 5)), output_size=(2, 0)),
            r"got \(2, 0\)",
        ),
        (
            dict(features=np.zeros((1, 4, 4, 4)), rois=np.zeros((1, 5)), output_size=(2, 3)),
            r"kh\*kw \(6\)",
        ),
        (
            dict(features=np.zeros((1, 4, 4, 4)), rois=np.zeros((1, 5)), output_size=(1, 2, 2)),
            "int or",
        ),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    args = dict(output_size=2, spatial_scale=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ps_roi_pool_reference(**args)


def test_zero_rois():
    out = ps_roi_pool_reference(np.zeros((1, 4, 4, 8)), np.zeros((0, 5)), 2, 1.0)
    assert out.shape == (0, 2, 2, 2)


def test_rectangular_grid_bins_and_channel_layout():
    # output_size (2, 1) on the 4x4 ramp, avg, RoI rows [0, 4), cols [0, 2): bin i = 0 covers
    # rows {0, 1}, i = 1 rows {2, 3}; both cover cols {0, 1}. Bin (i, 0) reads channel i*1 + 0.
    out = ps_roi_pool_reference(_ramp_features(2), [[0, 0, 0, 4, 2]], (2, 1), 1.0)
    assert out.shape == (1, 2, 1, 2)
    # mean of f over rows {0,1} x cols {0,1} = (0+1+4+5)/4 = 2.5; rows {2,3}: 10.5
    # channel (i*kw + j)*C + c = 2i + c adds 100*(2i + c)
    np.testing.assert_allclose(out[0, :, 0, :], [[2.5, 102.5], [210.5, 310.5]])
    # (1, 2): bins split the columns instead; bin (0, j) reads channels 2j + c.
    out = ps_roi_pool_reference(_ramp_features(2), [[0, 0, 0, 2, 4]], (1, 2), 1.0)
    np.testing.assert_allclose(out[0, 0, :, :], [[2.5, 102.5], [204.5, 304.5]])


def test_adaptive_samples_rule():
    from helpers.psroi_reference import adaptive_samples

    assert [adaptive_samples(v) for v in (0.2, 1.0, 1.01, 2.0, 2.5, -3.0, 0.0)] == [
        1,
        1,
        2,
        2,
        3,
        1,
        1,
    ]
    assert adaptive_samples(float("nan")) == 1 and adaptive_samples(1e30) == 128


def test_bilinear_adaptive_sampling_hand_case():
    # RoI (0, 0.5, 0.5, 3.5, 2.5) at scale 1, k = 1: y from 0 to 3 (bin_h = 3 -> 3 rows of
    # samples at y = 0.5, 1.5, 2.5), x from 0 to 2 (bin_w = 2 -> x = 0.5, 1.5). f = 4y + x is
    # linear and every sample lies inside: the mean is f at the mean point (1.5, 1.0) = 7.
    roi = [[0, 0.5, 0.5, 3.5, 2.5]]
    out = ps_roi_pool_reference(_ramp_features(1), roi, 1, 1.0, mode="bilinear", sampling_ratio=0)
    assert out[0, 0, 0, 0] == pytest.approx(7.0)
    # Adaptive = the explicit grid: sampling_ratio 3 on y and 2 on x is what it used.
    grad = ps_roi_pool_reference_grad(
        (1, 4, 4, 1), roi, np.ones((1, 1, 1, 1)), 1, 1.0, mode="bilinear", sampling_ratio=-1
    )
    assert grad.sum() == pytest.approx(1.0)
    # samples at y in {0.5, 1.5, 2.5}: rows 0..3 weights (.5, 1, 1, .5)/3; x in {0.5, 1.5}:
    # cols 0..2 weights (.5, 1, .5)/2.
    np.testing.assert_allclose(grad[0, :, :3, 0], np.outer([0.5, 1, 1, 0.5], [0.5, 1, 0.5]) / 6.0)
