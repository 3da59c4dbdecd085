"""The compiled PS-RoI pooling op (RfcnPsRoiPool) through `ps_roi_pool(impl="custom")`.

Checked against the independent float64 NumPy reference (tests/helpers/psroi_reference.py) and the
pure-TF twin: forward and gradient for both modes, edge-case RoIs, dtypes, numeric gradients,
thread determinism, input validation (custom and twin side by side), unknown shapes inside
tf.function, and the loader's `auto` fallback. Contract: docs/ARCHITECTURE.md "PS-RoI pooling
op".

Shape shorthand: B images, H x W feature cells, k bins per side, C classes, K = k*k*C feature
channels, R RoIs (rows (batch_index, y1, x1, y2, x2) in input-image pixels).
"""

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from helpers.psroi_reference import ps_roi_pool_reference, ps_roi_pool_reference_grad

from rfcn_tf.ops import psroi_pool as psroi_module
from rfcn_tf.ops.psroi_pool import custom_op_available, custom_op_load_error, ps_roi_pool

MODES = ["avg", "bilinear"]
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _require_compiled_op():
    # A missing .so is a failure here, not a skip: `pip install -e .` builds it.
    assert custom_op_available(), f"compiled op did not load: {custom_op_load_error()}"
    assert custom_op_load_error() is None


def _rois(rng, num, batch, img_h, img_w):
    """RoIs of every kind, [num + 7, 5] float32: random ones (often partly outside the image),
    fully outside, tiny, reversed (y2 < y1, x2 < x1), zero-size, the whole image, and a
    fractional batch index; batch indices cover 0 .. batch-1."""
    rows = []
    for _ in range(num):
        y = np.sort(rng.uniform(-0.3 * img_h, 1.3 * img_h, 2))
        x = np.sort(rng.uniform(-0.3 * img_w, 1.3 * img_w, 2))
        rows.append([y[0], x[0], y[1], x[1]])
    y0, x0 = rng.uniform(0, img_h - 4), rng.uniform(0, img_w - 4)
    rows += [
        [img_h + 10, img_w + 3, img_h + 50, img_w + 70],  # fully outside, below right
        [-90, -70, -20, -30],  # fully outside, above left
        [y0, x0, y0 + 1.5, x0 + 2.5],  # tiny
        [y0 + 37, x0 + 51, y0, x0],  # reversed
        [y0, x0, y0, x0],  # zero size
        [0, 0, img_h, img_w],  # whole image
        [y0, x0, y0 + 20, x0 + 30],  # fractional batch index below
    ]
    rows = np.asarray(rows, np.float64)
    batch_index = rng.integers(0, batch, len(rows)).astype(np.float64)
    batch_index[-1] = batch - 0.5
    return np.column_stack([batch_index, rows]).astype(np.float32)


def _case(seed, *, batch, height, width, k, num_out, spatial_scale, num=12, scale=1.0):
    rng = np.random.default_rng(seed)
    feats = (scale * rng.standard_normal((batch, height, width, k * k * num_out))).astype(
        np.float32
    )
    rois = _rois(rng, num, batch, height / spatial_scale, width / spatial_scale)
    grad = rng.standard_normal((len(rois), k, k, num_out)).astype(np.float32)
    return feats, rois, grad


def _forward_and_grad(feats, rois, grad_out, impl="custom", **kwargs):
    features = tf.constant(feats)
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = ps_roi_pool(features, tf.constant(rois), impl=impl, **kwargs)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * grad_out)
    return out.numpy(), tape.gradient(loss, features).numpy()


CASES = [
    # (k, num_out, batch, height, width, spatial_scale)
    (1, 3, 2, 9, 14, 0.25),
    (3, 4, 2, 9, 13, 1.0 / 16),
    (7, 2, 1, 16, 11, 0.5),
    (7, 21, 1, 38, 63, 1.0 / 16),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k, num_out, batch, height, width, spatial_scale", CASES)
def test_forward_and_gradient_match_reference(
    mode, k, num_out, batch, height, width, spatial_scale
):
    feats, rois, grad = _case(
        k * 100 + height,
        batch=batch,
        height=height,
        width=width,
        k=k,
        num_out=num_out,
        spatial_scale=spatial_scale,
        scale=3.0,
    )
    kwargs = dict(output_size=k, spatial_scale=spatial_scale, mode=mode, sampling_ratio=2)
    out, grad_features = _forward_and_grad(feats, rois, grad, **kwargs)
    assert out.shape == (len(rois), k, k, num_out) and out.dtype == np.float32
    ref = ps_roi_pool_reference(feats, rois, k, spatial_scale, mode, 2)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    ref_grad = ps_roi_pool_reference_grad(feats.shape, rois, grad, k, spatial_scale, mode, 2)
    np.testing.assert_allclose(grad_features, ref_grad, rtol=0, atol=TOL)
    # The case is not vacuous: some bins pool something, some RoIs pool nothing.
    assert np.abs(out).max() > 0.1 and np.all(out[-7] == 0) and np.all(out[-6] == 0)


@pytest.mark.parametrize("sampling_ratio", [1, 3, 4])
def test_bilinear_sampling_ratios_match_reference(sampling_ratio):
    feats, rois, grad = _case(7, batch=2, height=10, width=12, k=3, num_out=2, spatial_scale=0.5)
    kwargs = dict(output_size=3, spatial_scale=0.5, mode="bilinear", sampling_ratio=sampling_ratio)
    out, grad_features = _forward_and_grad(feats, rois, grad, **kwargs)
    np.testing.assert_allclose(
        out, ps_roi_pool_reference(feats, rois, 3, 0.5, "bilinear", sampling_ratio), atol=TOL
    )
    np.testing.assert_allclose(
        grad_features,
        ps_roi_pool_reference_grad(feats.shape, rois, grad, 3, 0.5, "bilinear", sampling_ratio),
        atol=TOL,
    )


GRID_CASES = [
    # (mode, (kh, kw), sampling_ratio, batch, height, width, spatial_scale)
    ("avg", (2, 3), 2, 2, 9, 13, 1.0 / 16),
    ("avg", (7, 1), 0, 1, 16, 11, 0.5),
    ("bilinear", (2, 3), 2, 2, 9, 13, 1.0 / 16),
    ("bilinear", (1, 4), 3, 2, 9, 14, 0.25),
    ("bilinear", (3, 3), 0, 2, 9, 13, 0.5),  # adaptive
    ("bilinear", (3, 5), 0, 2, 17, 23, 0.5),  # adaptive, rectangular
    ("bilinear", (7, 5), -1, 1, 38, 63, 1.0 / 16),  # adaptive, negative, detector-sized map
    ("bilinear", (2, 2), 0, 1, 9, 14, 0.1),  # adaptive with sub-cell bins: mostly 1 point
]


@pytest.mark.parametrize(
    "mode, grid, sampling_ratio, batch, height, width, spatial_scale", GRID_CASES
)
def test_rectangular_grids_and_adaptive_sampling_match_reference_and_twin(
    mode, grid, sampling_ratio, batch, height, width, spatial_scale
):
    kh, kw = grid
    feats, rois, _ = _case(
        kh * 10 + kw + height,
        batch=batch,
        height=height,
        width=width,
        k=1,
        num_out=kh * kw * 3,
        spatial_scale=spatial_scale,
        scale=3.0,
    )
    grad = np.random.default_rng(kh + kw).standard_normal((len(rois), kh, kw, 3)).astype(np.float32)
    kwargs = dict(
        output_size=grid, spatial_scale=spatial_scale, mode=mode, sampling_ratio=sampling_ratio
    )
    out, grad_features = _forward_and_grad(feats, rois, grad, **kwargs)
    assert out.shape == (len(rois), kh, kw, 3)
    # The op's spatial_scale attr is float32: 0.1 is 0.100000001..., which moves an adaptive
    # count at an exact integer bin size (ceil(7.0000001) = 8); the reference gets that value.
    scale32 = float(np.float32(spatial_scale))
    ref = ps_roi_pool_reference(feats, rois, grid, scale32, mode, sampling_ratio)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(
        grad_features,
        ps_roi_pool_reference_grad(feats.shape, rois, grad, grid, scale32, mode, sampling_ratio),
        rtol=0,
        atol=TOL,
    )
    twin_out, twin_grad = _forward_and_grad(feats, rois, grad, impl="tf", **kwargs)
    np.testing.assert_allclose(out, twin_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad_features, twin_grad, rtol=0, atol=TOL)
    assert np.abs(out).max() > 0.1


def test_adaptive_sampling_uses_more_points_on_large_rois():
    # A RoI of 8 x 6 cells with k = 2: 4 x 3 points per bin (adaptive) differ from 2 x 2.
    feats, _, _ = _case(8, batch=1, height=10, width=10, k=2, num_out=2, spatial_scale=1.0)
    rois = np.array([[0, 1.0, 2.0, 9.0, 8.0]], np.float32)
    kwargs = dict(output_size=2, spatial_scale=1.0, mode="bilinear", impl="custom")
    adaptive = ps_roi_pool(feats, rois, sampling_ratio=0, **kwargs).numpy()
    explicit = ps_roi_pool_reference(feats, rois, 2, 1.0, "bilinear", 0)
    fixed = ps_roi_pool(feats, rois, sampling_ratio=2, **kwargs).numpy()
    np.testing.assert_allclose(adaptive, explicit, atol=TOL)
    assert np.abs(adaptive - fixed).max() > 1e-2


def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def test_k1_avg_is_plain_average_over_the_rounded_box():
    # Property: with k = 1 the avg op is the plain mean over the rounded box.
    feats, rois, _ = _case(3, batch=2, height=11, width=9, k=1, num_out=5, spatial_scale=0.25)
    out = ps_roi_pool(
        feats, rois, output_size=1, spatial_scale=0.25, mode="avg", impl="custom"
    ).numpy()
    for r, (b, y1, x1, y2, x2) in enumerate(rois.astype(np.float64)):
        y1r, x1r = _round_half_away(y1 * 0.25), _round_half_away(x1 * 0.25)
        h = max(_round_half_away(y2 * 0.25) - y1r, 1)
        w = max(_round_half_away(x2 * 0.25) - x1r, 1)
        rows = slice(int(np.clip(y1r, 0, 11)), int(np.clip(y1r + h, 0, 11)))
        cols = slice(int(np.clip(x1r, 0, 9)), int(np.clip(x1r + w, 0, 9)))
        cells = feats[int(b), rows, cols, :].reshape(-1, 5)
        expected = cells.mean(axis=0) if len(cells) else np.zeros(5)
        np.testing.assert_allclose(out[r, 0, 0], expected, atol=1e-5, err_msg=f"roi {r}")


def test_bin_major_channel_layout_hand_computed():
    # features[0, h, w, ch] = 100*ch + 10*h + w on a 4x4 map, k = 2, C = 2. RoI (0, 0, 0, 3, 3)
    # at scale 1: roi_h = roi_w = 3; bin 0 covers cells [0, 2), bin 1 covers [1, 3).
    h, w, ch = np.meshgrid(np.arange(4), np.arange(4), np.arange(8), indexing="ij")
    feats = (100.0 * ch + 10.0 * h + w)[None].astype(np.float32)
    out = ps_roi_pool(
        feats, [[0, 0, 0, 3, 3]], output_size=2, spatial_scale=1.0, mode="avg", impl="custom"
    ).numpy()[0]
    # Bin (i, j), class c reads channel (i*2 + j)*2 + c; mean of rows/cols {0,1} = 0.5,
    # of {1,2} = 1.5.
    for i, j, c in np.ndindex(2, 2, 2):
        expected = 100.0 * ((i * 2 + j) * 2 + c) + 10.0 * (0.5 + i) + (0.5 + j)
        assert out[i, j, c] == pytest.approx(expected, abs=1e-4), (i, j, c)


def test_avg_rounds_half_away_from_zero():
    # y1 * 0.5 = 2.5 -> 3 (std::round), not 2 (half to even); a 1-row map column shows it.
    feats = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)
    out = ps_roi_pool(
        feats, [[0, 5, 0, 5, 1]], output_size=1, spatial_scale=0.5, mode="avg", impl="custom"
    ).numpy()
    assert out[0, 0, 0, 0] == 3.0


@pytest.mark.parametrize("mode", MODES)
def test_zero_rois(mode):
    feats, _, _ = _case(1, batch=2, height=5, width=6, k=3, num_out=2, spatial_scale=1.0)
    rois = np.zeros((0, 5), np.float32)
    out, grad_features = _forward_and_grad(
        feats, rois, np.zeros((0, 3, 3, 2), np.float32), output_size=3, spatial_scale=1.0, mode=mode
    )
    assert out.shape == (0, 3, 3, 2)
    assert grad_features.shape == feats.shape and not grad_features.any()


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_and_huge_coordinates_pool_zero_and_never_crash(mode):
    feats, _, grad = _case(2, batch=1, height=6, width=7, k=2, num_out=3, spatial_scale=1.0, num=0)
    inf, nan = np.inf, np.nan
    rois = np.array(
        [
            [0, nan, 1, 4, 5],
            [0, 1, nan, 4, 5],
            [0, 1, 1, nan, 5],
            [0, 1, 1, 4, nan],
            [0, -inf, 1, 4, 5],
            [0, 1, 1, inf, 5],
            [0, -inf, -inf, inf, inf],
            [0, -3e38, -3e38, 3e38, 3e38],
            [0, 1e9, 1e9, 2e9, 2e9],
        ],
        np.float32,
    )
    grad = grad[:1].repeat(len(rois), axis=0)
    out, grad_features = _forward_and_grad(
        feats, rois, grad, output_size=2, spatial_scale=1.0, mode=mode
    )
    ref = ps_roi_pool_reference(feats, rois, 2, 1.0, mode, 2)
    np.testing.assert_allclose(out, ref, atol=TOL)
    assert np.all(out[:7] == 0)  # non-finite corners pool 0 in both modes
    assert np.isfinite(grad_features).all()


@pytest.mark.parametrize("mode", MODES)
def test_matches_twin_forward_and_gradient_on_detector_sized_input(mode):
    # 1 x 38 x 63 x (7*7*21), 300 RoIs of 32..400 px in a 600 x 1000 image (the benchmark's).
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((1, 38, 63, 7 * 7 * 21)).astype(np.float32)
    size = rng.uniform(32, 400, (300, 2))
    y1 = rng.uniform(0, 600 - size[:, 0])
    x1 = rng.uniform(0, 1000 - size[:, 1])
    rois = np.column_stack([np.zeros(300), y1, x1, y1 + size[:, 0], x1 + size[:, 1]]).astype(
        np.float32
    )
    grad = rng.standard_normal((300, 7, 7, 21)).astype(np.float32)
    kwargs = dict(output_size=7, spatial_scale=1.0 / 16, mode=mode, sampling_ratio=2)
    out_c, grad_c = _forward_and_grad(feats, rois, grad, impl="custom", **kwargs)
    out_t, grad_t = _forward_and_grad(feats, rois, grad, impl="tf", **kwargs)
    np.testing.assert_allclose(out_c, out_t, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad_c, grad_t, rtol=0, atol=TOL)
    assert np.abs(grad_c).max() > 0.1


@pytest.mark.parametrize("mode", MODES)
def test_numeric_gradient(mode):
    rng = np.random.default_rng(11)
    feats = rng.standard_normal((2, 4, 5, 2 * 2 * 2)).astype(np.float32)
    rois = tf.constant(
        [[0, 0.5, 1.0, 6.5, 8.0], [1, 2.0, -1.0, 7.0, 9.5], [1, 4.0, 4.0, 5.0, 5.0]], tf.float32
    )

    def pool(x):
        return ps_roi_pool(
            x, rois, output_size=2, spatial_scale=0.5, mode=mode, sampling_ratio=2, impl="custom"
        )

    theoretical, numerical = tf.test.compute_gradient(pool, [tf.constant(feats)], delta=1e-2)
    assert np.abs(theoretical[0]).max() > 0.05
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


@pytest.mark.parametrize("mode", MODES)
def test_backward_is_the_adjoint_and_its_gradient_is_the_forward(mode):
    # <pool(x), y> == <x, pool_grad(y)>, and the registered gradient of RfcnPsRoiPoolGrad
    # (second-order autodiff) matches its numeric Jacobian.
    feats, rois, grad = _case(
        4, batch=2, height=7, width=8, k=2, num_out=2, spatial_scale=0.5, num=4
    )
    kwargs = dict(spatial_scale=0.5, mode=mode, sampling_ratio=2)
    out, grad_features = _forward_and_grad(feats, rois, grad, output_size=2, **kwargs)
    assert np.sum(out.astype(np.float64) * grad) == pytest.approx(
        np.sum(feats.astype(np.float64) * grad_features), rel=1e-5
    )

    library = psroi_module._LIBRARY.module()
    theoretical, numerical = tf.test.compute_gradient(
        lambda g: library.rfcn_ps_roi_pool_grad(
            feats, rois, g, pooled_height=2, pooled_width=2, **kwargs
        ),
        [tf.constant(grad)],
        delta=1e-2,
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


@pytest.mark.parametrize("dtype, atol", [(tf.float16, 2e-2), (tf.bfloat16, 6e-2)])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_dtypes(mode, dtype, atol):
    feats, rois, grad = _case(9, batch=2, height=9, width=10, k=3, num_out=2, spatial_scale=0.5)
    kwargs = dict(output_size=3, spatial_scale=0.5, mode=mode)
    features = tf.cast(feats, dtype)
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = ps_roi_pool(features, rois, impl="custom", **kwargs)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * grad)
    grad_features = tape.gradient(loss, features)
    assert out.dtype == dtype and grad_features.dtype == dtype
    exact = tf.cast(features, tf.float32).numpy()  # the rounded inputs, exactly
    np.testing.assert_allclose(
        tf.cast(out, tf.float32).numpy(),
        ps_roi_pool_reference(exact, rois, 3, 0.5, mode, 2),
        atol=atol,
    )
    np.testing.assert_allclose(
        tf.cast(grad_features, tf.float32).numpy(),
        ps_roi_pool_reference_grad(feats.shape, rois, grad, 3, 0.5, mode, 2),
        atol=atol,
    )


_DETERMINISM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    from rfcn_tf.ops.psroi_pool import ps_roi_pool
    rng = np.random.default_rng(0)
    feats = tf.constant(rng.standard_normal((2, 38, 63, 7 * 7 * 21)).astype(np.float32))
    size = rng.uniform(32, 400, (600, 2))
    y1, x1 = rng.uniform(-50, 600 - size[:, 0]), rng.uniform(-50, 1000 - size[:, 1])
    rois = tf.constant(np.column_stack([rng.integers(0, 2, 600), y1, x1, y1 + size[:, 0],
                                        x1 + size[:, 1]]).astype(np.float32))
    grad = tf.constant(rng.standard_normal((600, 7, 7, 21)).astype(np.float32))
    result = {}
    # (name, mode, output_size, sampling_ratio); 1029 channels = 7*7*21 = 7*3*49
    for name, mode, grid, sr in (("avg", "avg", 7, 2), ("bilinear", "bilinear", 7, 2),
                                 ("adaptive", "bilinear", (7, 3), 0)):
        for run in range(3):
            with tf.GradientTape() as tape:
                tape.watch(feats)
                out = ps_roi_pool(feats, rois, output_size=grid, mode=mode, sampling_ratio=sr,
                                  impl="custom")
            g = tape.gradient(out, feats, output_gradients=tf.reshape(grad, tf.shape(out)))
            if run == 0:
                result[name + "_out"], result[name + "_grad"] = out.numpy(), g.numpy()
            else:  # run to run, bit for bit
                assert np.array_equal(out.numpy(), result[name + "_out"]), (name, run)
                assert np.array_equal(g.numpy(), result[name + "_grad"]), (name, run)
    np.savez(sys.argv[2], **result)
""")


@pytest.mark.slow
def test_deterministic_across_runs_and_thread_counts(tmp_path):
    # Each gradient cell sums its contributions in one fixed order (RoIs ascending), so the
    # result is the same bits run after run and whatever the number of threads.
    script = tmp_path / "determinism.py"
    script.write_text(_DETERMINISM_SCRIPT)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(psroi_module.__file__)))
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    )
    results = {}
    for threads in (1, 4):
        path = tmp_path / f"threads{threads}.npz"
        proc = subprocess.run(
            [sys.executable, str(script), str(threads), str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[threads] = np.load(path)
    for key in results[1].files:
        assert np.array_equal(results[1][key], results[4][key]), key
    assert np.abs(results[1]["avg_grad"]).max() > 0


# ------------------------------------------------------------------ input validation


def _feats(shape):
    return np.zeros(shape, np.float32)


GOOD_ROIS = np.array([[0, 0, 0, 16, 16]], np.float32)
BAD_INPUTS = [
    # (id, features, rois, kwargs, match): match works for both implementations' messages.
    (
        "features_rank3",
        _feats((4, 4, 4)),
        GOOD_ROIS,
        dict(output_size=2),
        r"features must be .*rank 4.*got shape",
    ),
    (
        "rois_width4",
        _feats((1, 4, 4, 4)),
        np.zeros((3, 4), np.float32),
        dict(output_size=2),
        r"rois must be \[R, 5\].*got shape.*3.*4",
    ),
    (
        "rois_rank1",
        _feats((1, 4, 4, 4)),
        np.zeros((5,), np.float32),
        dict(output_size=2),
        r"rois must be \[R, 5\].*got shape.*5",
    ),
    (
        "channels_not_k2_multiple",
        _feats((1, 4, 4, 50)),
        GOOD_ROIS,
        dict(output_size=7),
        r"features channels \(50\).*49",
    ),
    ("output_size_0", _feats((1, 4, 4, 4)), GOOD_ROIS, dict(output_size=0), r"output_size.*\b0\b"),
    (
        "output_size_pair_0",
        _feats((1, 4, 4, 4)),
        GOOD_ROIS,
        dict(output_size=(2, 0)),
        r"output_size must be >= 1, got \(2, 0\)",
    ),
    (
        "output_size_triple",
        _feats((1, 4, 4, 4)),
        GOOD_ROIS,
        dict(output_size=(1, 2, 2)),
        r"output_size must be an int k or a pair \(kh, kw\).*\(1, 2, 2\)",
    ),
    (
        "channels_not_grid_multiple",
        _feats((1, 4, 4, 8)),
        GOOD_ROIS,
        dict(output_size=(2, 3)),
        r"features channels \(8\).*= 6",
    ),
    (
        "sampling_ratio_float",
        _feats((1, 4, 4, 4)),
        GOOD_ROIS,
        dict(output_size=2, mode="bilinear", sampling_ratio=1.5),
        r"sampling_ratio.*1\.5",
    ),
    ("mode_max", _feats((1, 4, 4, 4)), GOOD_ROIS, dict(output_size=2, mode="max"), r"mode.*max"),
    (
        "spatial_scale_0",
        _feats((1, 4, 4, 4)),
        GOOD_ROIS,
        dict(output_size=2, spatial_scale=0.0),
        r"spatial_scale must be a finite number > 0, got 0",
    ),
    (
        "height_0",
        _feats((1, 0, 4, 4)),
        GOOD_ROIS,
        dict(output_size=2),
        r"features (height|width).*must be >= 1",
    ),
    (
        "batch_index_1_of_1",
        _feats((1, 4, 4, 4)),
        np.array([[1, 0, 0, 8, 8]], np.float32),
        dict(output_size=2),
        r"(?s)batch.index.*\b1\b",
    ),
    (
        "batch_index_negative",
        _feats((2, 4, 4, 4)),
        np.array([[0, 0, 0, 8, 8], [-1, 0, 0, 8, 8]], np.float32),
        dict(output_size=2),
        r"(?s)batch.index.*-1",
    ),
    (
        "batch_index_nan",
        _feats((2, 4, 4, 4)),
        np.array([[np.nan, 0, 0, 8, 8]], np.float32),
        dict(output_size=2),
        r"(?s)batch.index.*nan",
    ),
]


@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("impl", ["custom", "tf"])
@pytest.mark.parametrize(
    "features, rois, kwargs, match",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_inputs_raise_naming_the_value(impl, in_function, features, rois, kwargs, match):
    def run(f, r):
        return ps_roi_pool(f, r, impl=impl, **kwargs)

    fn = tf.function(run) if in_function else run
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=match):
        fn(tf.constant(features), tf.constant(rois))


def test_grad_op_rejects_a_grad_of_the_wrong_shape():
    library = psroi_module._LIBRARY.module()
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"grad must be \[R, kh, kw, C\] = \[1,2,1,4\]"
    ):
        library.rfcn_ps_roi_pool_grad(
            _feats((1, 4, 4, 8)),
            GOOD_ROIS,
            np.zeros((1, 2, 2, 3), np.float32),
            pooled_height=2,
            pooled_width=1,
        )


def test_unknown_impl_is_a_value_error():
    with pytest.raises(ValueError, match="impl must be one of .*got 'cuda'"):
        ps_roi_pool(_feats((1, 4, 4, 4)), GOOD_ROIS, output_size=2, impl="cuda")


# ------------------------------------------------------------------ shapes in tf.function


@pytest.mark.parametrize("impl", ["custom", "tf"])
@pytest.mark.parametrize("mode", MODES)
def test_tf_function_with_unknown_r_h_w(mode, impl):
    traces = []

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3 * 3 * 4], tf.float32),
            tf.TensorSpec([None, 5], tf.float32),
        ]
    )
    def pool(features, rois):
        out = ps_roi_pool(features, rois, output_size=3, spatial_scale=0.5, mode=mode, impl=impl)
        traces.append(out.shape)
        return out

    feats, rois, _ = _case(2, batch=2, height=6, width=9, k=3, num_out=4, spatial_scale=0.5)
    out = pool(feats, rois)
    out2 = pool(feats[:1, :5, :7], rois[rois[:, 0] < 1])
    assert traces[0].as_list() == [None, 3, 3, 4] and len(traces) == 1
    np.testing.assert_allclose(
        out.numpy(), ps_roi_pool_reference(feats, rois, 3, 0.5, mode, 2), atol=TOL
    )
    assert out2.shape[0] == int(np.sum(rois[:, 0] < 1))


def test_static_shapes_from_the_shape_function():
    graph = tf.Graph()
    with graph.as_default():
        feats = tf.compat.v1.placeholder(tf.float32, [2, None, None, 7 * 7 * 5])
        unknown_c = tf.compat.v1.placeholder(tf.float32, [None, None, None, None])
        rois = tf.compat.v1.placeholder(tf.float32, [None, 5])
        rois_known = tf.compat.v1.placeholder(tf.float32, [12, 5])
        assert ps_roi_pool(feats, rois, impl="custom").shape.as_list() == [None, 7, 7, 5]
        assert ps_roi_pool(feats, rois_known, impl="custom").shape.as_list() == [12, 7, 7, 5]
        assert ps_roi_pool(unknown_c, rois, output_size=3, impl="custom").shape.as_list() == [
            None,
            3,
            3,
            None,
        ]
        with pytest.raises(ValueError, match=r"features channels \(245\).*must be divisible"):
            ps_roi_pool(feats, rois, output_size=3, impl="custom")


def test_gradient_has_none_for_rois_and_runs_in_tf_function():
    feats, rois, grad = _case(6, batch=2, height=6, width=7, k=2, num_out=3, spatial_scale=0.5)

    @tf.function
    def grads(f, r):
        with tf.GradientTape() as tape:
            tape.watch([f, r])
            out = ps_roi_pool(f, r, output_size=2, spatial_scale=0.5, impl="custom")
        return tape.gradient(out, [f, r], output_gradients=grad)

    g_features, g_rois = grads(tf.constant(feats), tf.constant(rois))
    assert g_rois is None
    np.testing.assert_allclose(
        g_features.numpy(),
        ps_roi_pool_reference_grad(feats.shape, rois, grad, 2, 0.5, "avg", 2),
        atol=TOL,
    )


# ------------------------------------------------------------------ loader


def test_so_lives_inside_the_package():
    path = psroi_module._LIBRARY.path
    assert os.path.basename(path) == "_psroi_pool_ops.so"
    assert os.path.dirname(path) == os.path.dirname(os.path.abspath(psroi_module.__file__))


def test_auto_uses_the_custom_op_when_it_loaded(caplog):
    feats, rois, _ = _case(8, batch=1, height=5, width=5, k=2, num_out=1, spatial_scale=1.0)
    with caplog.at_level(logging.WARNING, logger=psroi_module.__name__):
        graph = tf.function(lambda f, r: ps_roi_pool(f, r, output_size=2, spatial_scale=1.0))
        ops = {
            op.type
            for op in graph.get_concrete_function(
                tf.constant(feats), tf.constant(rois)
            ).graph.get_operations()
        }
    assert "RfcnPsRoiPool" in ops and not caplog.records


def test_auto_falls_back_to_the_twin_with_one_warning(monkeypatch, caplog, tmp_path):
    missing = psroi_module._OpLibrary(str(tmp_path / "_psroi_pool_ops.so"))
    monkeypatch.setattr(psroi_module, "_LIBRARY", missing)
    monkeypatch.setattr(psroi_module, "_FALLBACK_WARNED", False)
    assert not custom_op_available()
    assert "does not exist" in custom_op_load_error() and str(tmp_path) in custom_op_load_error()

    feats, rois, _ = _case(8, batch=1, height=5, width=5, k=2, num_out=1, spatial_scale=1.0)
    kwargs = dict(output_size=2, spatial_scale=1.0, mode="avg")
    with caplog.at_level(logging.WARNING, logger=psroi_module.__name__):
        out1 = ps_roi_pool(feats, rois, **kwargs)
        out2 = ps_roi_pool(feats, rois, **kwargs)
    warnings = [r for r in caplog.records if "pure-TF twin" in r.getMessage()]
    assert len(warnings) == 1 and "does not exist" in warnings[0].getMessage()
    expected = ps_roi_pool(feats, rois, impl="tf", **kwargs)
    np.testing.assert_array_equal(out1.numpy(), expected.numpy())
    np.testing.assert_array_equal(out2.numpy(), expected.numpy())

    with pytest.raises(RuntimeError, match=r"impl='custom'.*does not exist"):
        ps_roi_pool(feats, rois, impl="custom", **kwargs)


def test_a_broken_library_reports_why(tmp_path):
    broken = tmp_path / "_psroi_pool_ops.so"
    broken.write_bytes(b"not an ELF file")
    library = psroi_module._OpLibrary(str(broken))
    assert library.module() is None
    assert "tf.load_op_library" in library.error() and "rebuild" in library.error()
