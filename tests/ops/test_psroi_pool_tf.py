"""The pure-TF PS-RoI pooling twin against the float64 NumPy reference (forward and gradient),
its properties, its behaviour inside tf.function with unknown shapes, and its input validation.

Contract: docs/ARCHITECTURE.md "PS-RoI pooling op"; agreement to 1e-5 with the reference.
"""

import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers.psroi_reference import ps_roi_pool_reference, ps_roi_pool_reference_grad

from rfcn_tf.ops.psroi_pool_tf import ps_roi_pool_tf

MODES = ["avg", "bilinear"]
TOL = 1e-5


def _make_case(seed, *, batch=2, height=9, width=14, k=3, num_out=2, spatial_scale=0.25):
    """Features N(0, 1) and RoIs of every kind the tests care about (input-image pixels).

    Rows cover: random boxes partly outside the map, boxes fully outside (below/right and
    above/left), tiny boxes (< 1 cell), reversed boxes (y2 < y1, x2 < x1), zero-size boxes, and
    batch indices 0 .. batch-1 (fractional ones too: floor picks the image).
    """
    rng = np.random.default_rng(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    feats = rng.normal(size=(batch, height, width, k * k * num_out)).astype(np.float32)
    rows = []
    for _ in range(8):  # random, often partly outside
        y = np.sort(rng.uniform(-0.3 * img_h, 1.3 * img_h, 2))
        x = np.sort(rng.uniform(-0.3 * img_w, 1.3 * img_w, 2))
        rows.append([y[0], x[0], y[1], x[1]])
    rows.append([img_h + 5, img_w + 3, img_h + 40, img_w + 60])  # fully outside, below right
    rows.append([-80, -90, -30, -20])  # fully outside, above left
    y0, x0 = rng.uniform(0, img_h - 2), rng.uniform(0, img_w - 2)
    rows.append([y0, x0, y0 + 0.3 / spatial_scale, x0 + 0.45 / spatial_scale])  # tiny
    rows.append([y0 + 7, x0 + 9, y0, x0])  # reversed
    rows.append([y0, x0, y0, x0])  # zero size
    rows.append([0, 0, img_h, img_w])  # the whole image
    rows = np.asarray(rows, dtype=np.float64)
    batch_index = rng.integers(0, batch, len(rows)).astype(np.float64)
    batch_index[-1] = batch - 1 + 0.5  # fractional: image floor(v)
    rois = np.column_stack([batch_index, rows]).astype(np.float32)
    return feats, rois


def _twin_forward_and_grad(feats, rois, grad_out, **kwargs):
    features = tf.constant(feats)
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = ps_roi_pool_tf(features, tf.constant(rois), **kwargs)
        loss = tf.reduce_sum(out * tf.constant(grad_out, out.dtype))
    return out.numpy(), tape.gradient(loss, features).numpy()


CASES = [
    # (k, num_out, batch, height, width, spatial_scale)
    (1, 3, 2, 9, 14, 0.25),
    (3, 2, 2, 9, 14, 0.25),
    (3, 4, 1, 13, 6, 1.0),
    (7, 2, 3, 12, 17, 1.0 / 16),
    (7, 1, 2, 5, 5, 0.5),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k, num_out, batch, height, width, spatial_scale", CASES)
def test_forward_and_gradient_match_reference(
    mode, k, num_out, batch, height, width, spatial_scale
):
    seed = zlib.crc32(f"{mode}-{k}-{num_out}-{height}-{width}".encode())
    feats, rois = _make_case(
        seed,
        batch=batch,
        height=height,
        width=width,
        k=k,
        num_out=num_out,
        spatial_scale=spatial_scale,
    )
    grad_out = np.random.default_rng(seed + 1).normal(size=(len(rois), k, k, num_out))
    kwargs = dict(output_size=k, spatial_scale=spatial_scale, mode=mode, sampling_ratio=2)
    out, grad = _twin_forward_and_grad(feats, rois, grad_out, **kwargs)

    ref = ps_roi_pool_reference(feats, rois, k, spatial_scale, mode, 2)
    ref_grad = ps_roi_pool_reference_grad(feats.shape, rois, grad_out, k, spatial_scale, mode, 2)
    assert out.shape == (len(rois), k, k, num_out)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=TOL)
    # The case must exercise what it claims: some bins empty/zero, most not.
    assert np.any(ref == 0) and np.mean(ref != 0) > 0.3


@pytest.mark.parametrize("sampling_ratio", [1, 3])
def test_bilinear_sampling_ratios_match_reference(sampling_ratio):
    feats, rois = _make_case(11, k=3, num_out=2)
    grad_out = np.random.default_rng(12).normal(size=(len(rois), 3, 3, 2))
    out, grad = _twin_forward_and_grad(
        feats,
        rois,
        grad_out,
        output_size=3,
        spatial_scale=0.25,
        mode="bilinear",
        sampling_ratio=sampling_ratio,
    )
    np.testing.assert_allclose(
        out,
        ps_roi_pool_reference(feats, rois, 3, 0.25, "bilinear", sampling_ratio),
        rtol=0,
        atol=TOL,
    )
    np.testing.assert_allclose(
        grad,
        ps_roi_pool_reference_grad(
            feats.shape, rois, grad_out, 3, 0.25, "bilinear", sampling_ratio
        ),
        rtol=0,
        atol=TOL,
    )


GRID_CASES = [
    # (mode, (kh, kw), sampling_ratio, spatial_scale)
    ("avg", (2, 3), 2, 0.25),
    ("avg", (3, 1), 0, 1.0),
    ("bilinear", (2, 3), 2, 0.25),
    ("bilinear", (1, 4), 1, 1.0),
    ("bilinear", (3, 3), 0, 1.0),  # adaptive
    ("bilinear", (2, 3), 0, 1.0),  # adaptive, rectangular
    ("bilinear", (7, 5), -1, 0.5),  # adaptive, negative means adaptive too
    ("bilinear", (3, 2), 0, 0.25),  # adaptive with sub-cell bins: mostly 1 point
]


@pytest.mark.parametrize("mode, grid, sampling_ratio, spatial_scale", GRID_CASES)
def test_rectangular_grids_and_adaptive_sampling_match_reference(
    mode, grid, sampling_ratio, spatial_scale
):
    kh, kw = grid
    seed = zlib.crc32(f"{mode}-{grid}-{sampling_ratio}-{spatial_scale}".encode())
    feats, rois = _make_case(seed, k=1, num_out=kh * kw * 2, spatial_scale=spatial_scale)
    grad_out = np.random.default_rng(seed + 1).normal(size=(len(rois), kh, kw, 2))
    out, grad = _twin_forward_and_grad(
        feats,
        rois,
        grad_out,
        output_size=grid,
        spatial_scale=spatial_scale,
        mode=mode,
        sampling_ratio=sampling_ratio,
    )
    ref = ps_roi_pool_reference(feats, rois, grid, spatial_scale, mode, sampling_ratio)
    ref_grad = ps_roi_pool_reference_grad(
        feats.shape, rois, grad_out, grid, spatial_scale, mode, sampling_ratio
    )
    assert out.shape == (len(rois), kh, kw, 2)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=TOL)
    assert np.mean(ref != 0) > 0.3


def test_adaptive_differs_from_fixed_and_int_equals_square_pair():
    feats, rois = _make_case(21, k=3, num_out=2, spatial_scale=1.0)
    kwargs = dict(spatial_scale=1.0, mode="bilinear")
    adaptive = ps_roi_pool_tf(feats, rois, output_size=3, sampling_ratio=0, **kwargs).numpy()
    fixed = ps_roi_pool_tf(feats, rois, output_size=3, sampling_ratio=2, **kwargs).numpy()
    pair = ps_roi_pool_tf(feats, rois, output_size=(3, 3), sampling_ratio=2, **kwargs).numpy()
    assert np.abs(adaptive - fixed).max() > 1e-2  # the RoIs span several cells per bin
    np.testing.assert_array_equal(pair, fixed)


def test_avg_ignores_sampling_ratio():
    feats, rois = _make_case(3)
    a = ps_roi_pool_tf(feats, rois, output_size=3, spatial_scale=0.25, sampling_ratio=1)
    b = ps_roi_pool_tf(feats, rois, output_size=3, spatial_scale=0.25, sampling_ratio=4)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_avg_rounds_half_away_from_zero_like_std_round():
    # scale 0.5 puts every coordinate on a .5 tie: y1 = 0.5 -> 1 and y2 = 2.5 -> 3 (tf.round would
    # give 0 and 2), x1 = -0.5 -> -1 (floor(x + 0.5) would give 0). Hand values: see
    # test_psroi_reference.py::test_avg_rounds_half_away_from_zero.
    ramp = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    feats = ramp + 100.0 * np.arange(4, dtype=np.float32)
    out = ps_roi_pool_tf(
        feats, np.array([[0, 1, -1, 5, 5]], np.float32), output_size=2, spatial_scale=0.5
    )
    np.testing.assert_allclose(out.numpy()[0, :, :, 0], [[4.0, 105.5], [208.0, 309.5]])


def test_bin_major_channel_layout():
    # Constant maps: bin (i, j), class c must read channel (i*k + j)*C + c.
    k, num_out = 3, 2
    feats = np.broadcast_to(
        np.arange(k * k * num_out, dtype=np.float32), (1, 6, 6, k * k * num_out)
    )
    for mode in MODES:
        out = ps_roi_pool_tf(
            feats,
            np.array([[0, 0, 0, 6, 6]], np.float32),
            output_size=k,
            spatial_scale=1.0,
            mode=mode,
        )
        expected = np.arange(k * k * num_out, dtype=np.float32).reshape(k, k, num_out)
        np.testing.assert_allclose(out.numpy()[0], expected, atol=1e-6)


def test_k1_avg_is_plain_average_over_the_rounded_box():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(2, 10, 12, 3)).astype(np.float32)
    scale = 0.5
    rois, expected = [], []
    for _ in range(20):
        b = int(rng.integers(0, 2))
        y1, x1 = int(rng.integers(0, 9)), int(rng.integers(0, 11))
        y2, x2 = int(rng.integers(y1 + 1, 11)), int(rng.integers(x1 + 1, 13))
        # image coords that round (half away from zero) to the cell box [y1, y2) x [x1, x2)
        jitter = rng.uniform(-0.49, 0.49, 4)
        rois.append(
            [
                b,
                (y1 + jitter[0]) / scale,
                (x1 + jitter[1]) / scale,
                (y2 + jitter[2]) / scale,
                (x2 + jitter[3]) / scale,
            ]
        )
        expected.append(feats[b, y1:y2, x1:x2, :].mean(axis=(0, 1)))
    out = ps_roi_pool_tf(feats, np.array(rois, np.float32), output_size=1, spatial_scale=scale)
    np.testing.assert_allclose(out.numpy()[:, 0, 0, :], np.array(expected), rtol=0, atol=TOL)


@pytest.mark.parametrize("mode", MODES)
def test_numeric_gradient(mode):
    # float64 input: the twin computes in float64, so finite differences are accurate; the op is
    # linear in the features, so the numeric Jacobian is exact up to rounding.
    feats, rois = _make_case(21, batch=2, height=4, width=5, k=2, num_out=1, spatial_scale=0.5)
    rois = rois[[0, 1, 2, 10, 11, 13]]
    fn = tf.function(lambda f: ps_roi_pool_tf(f, rois, output_size=2, spatial_scale=0.5, mode=mode))
    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(feats, tf.float64)])
    assert np.abs(theoretical[0]).max() > 0.1
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_zero_rois(mode):
    feats = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype(np.float32))
    rois = tf.zeros([0, 5], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(feats)
        out = ps_roi_pool_tf(feats, rois, output_size=2, spatial_scale=1.0, mode=mode)
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 2, 2, 2)
    grad = tape.gradient(loss, feats)
    assert grad.shape == feats.shape
    np.testing.assert_array_equal(grad.numpy(), 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_tf_function_unknown_shapes_traces_once(mode):
    k, num_out = 3, 2
    sig = [
        tf.TensorSpec([None, None, None, k * k * num_out], tf.float32),
        tf.TensorSpec([None, 5], tf.float32),
    ]

    @tf.function(input_signature=sig)
    def pool_and_grad(features, rois):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = ps_roi_pool_tf(features, rois, output_size=k, spatial_scale=0.25, mode=mode)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, features)

    out_spec = pool_and_grad.get_concrete_function().structured_outputs[0]
    assert out_spec.shape.as_list() == [None, k, k, num_out]
    for seed, (batch, height, width) in enumerate([(2, 9, 14), (1, 4, 7), (3, 11, 5)]):
        feats, rois = _make_case(
            seed, batch=batch, height=height, width=width, k=k, num_out=num_out
        )
        rois = rois[: 3 + 4 * seed]
        out, grad = pool_and_grad(feats, rois)
        ref = ps_roi_pool_reference(feats, rois, k, 0.25, mode)
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=TOL)
        ref_grad = ps_roi_pool_reference_grad(feats.shape, rois, 2 * ref, k, 0.25, mode)
        np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=0, atol=1e-4)
    assert pool_and_grad.experimental_get_tracing_count() == 1


def test_tf_function_unknown_rank_and_channels():
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.float32)])
    def pool(features, rois):
        return ps_roi_pool_tf(features, rois, output_size=2, spatial_scale=0.25, mode="avg")

    assert pool.get_concrete_function().structured_outputs.shape.as_list() == [None, 2, 2, None]
    for seed, num_out in enumerate([1, 3]):
        feats, rois = _make_case(seed, k=2, num_out=num_out)
        np.testing.assert_allclose(
            pool(feats, rois).numpy(), ps_roi_pool_reference(feats, rois, 2, 0.25), rtol=0, atol=TOL
        )
    assert pool.experimental_get_tracing_count() == 1


def test_static_output_shape_with_known_r():
    out = tf.function(lambda f, r: ps_roi_pool_tf(f, r, output_size=3)).get_concrete_function(
        tf.TensorSpec([1, None, None, 27], tf.float32), tf.TensorSpec([7, 5], tf.float32)
    )
    assert out.structured_outputs.shape.as_list() == [7, 3, 3, 3]


@pytest.mark.parametrize(
    "dtype, atol", [(tf.float16, 2e-2), (tf.bfloat16, 5e-2), (tf.float64, 1e-12)]
)
@pytest.mark.parametrize("mode", MODES)
def test_other_float_dtypes(mode, dtype, atol):
    feats, rois = _make_case(8, k=3, num_out=2)
    features = tf.cast(tf.constant(feats), dtype)
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = ps_roi_pool_tf(features, rois, output_size=3, spatial_scale=0.25, mode=mode)
        loss = tf.reduce_sum(tf.cast(out, tf.float32))
    assert out.dtype == dtype
    grad = tape.gradient(loss, features)
    assert grad.dtype == dtype
    # reference on the values the twin actually saw (rounded to dtype)
    seen = tf.cast(features, tf.float64).numpy()
    np.testing.assert_allclose(
        tf.cast(out, tf.float64).numpy(),
        ps_roi_pool_reference(seen, rois, 3, 0.25, mode),
        rtol=0,
        atol=atol,
    )
    ones = np.ones((len(rois), 3, 3, 2))
    np.testing.assert_allclose(
        tf.cast(grad, tf.float64).numpy(),
        ps_roi_pool_reference_grad(seen.shape, rois, ones, 3, 0.25, mode),
        rtol=0,
        atol=atol,
    )


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_and_huge_coordinates_never_crash(mode):
    feats, rois = _make_case(9, k=3, num_out=2)
    rois = rois[:6].copy()
    rois[0, 1] = np.nan
    rois[1, 3:5] = np.nan
    rois[2, 4] = np.inf
    rois[3, 1] = -np.inf
    rois[4, 1:5] = [-3e38, -3e38, 3e38, 3e38]
    out = ps_roi_pool_tf(feats, rois, output_size=3, spatial_scale=0.25, mode=mode).numpy()
    ref = ps_roi_pool_reference(feats, rois, 3, 0.25, mode)
    # avg: a non-finite RoI pools to 0; bilinear: NaN/inf sample points contribute 0.
    np.testing.assert_array_equal(out[:4], 0.0)
    np.testing.assert_array_equal(ref[:4], 0.0)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[4:], ref[4:], rtol=0, atol=TOL)


def test_no_gradient_to_rois():
    feats, rois = _make_case(4)
    rois = tf.constant(rois)
    with tf.GradientTape() as tape:
        tape.watch(rois)
        out = ps_roi_pool_tf(feats, rois, output_size=3, spatial_scale=0.25, mode="bilinear")
    assert tape.gradient(out, rois) is None


def test_name_scope():
    graph = tf.function(lambda f, r: ps_roi_pool_tf(f, r, output_size=1, name="my_pool"))
    concrete = graph.get_concrete_function(
        tf.TensorSpec([1, 4, 4, 2], tf.float32), tf.TensorSpec([None, 5], tf.float32)
    )
    assert any(op.name.startswith("my_pool/") for op in concrete.graph.get_operations())


# --- validation ------------------------------------------------------------------------------

_F = np.zeros((2, 4, 4, 8), np.float32)
_R = np.zeros((1, 5), np.float32)


@pytest.mark.parametrize(
    "features, rois, kwargs, match",
    [
        (np.zeros((4, 4, 8), np.float32), _R, {}, r"rank 4.*\(4, 4, 8\)"),
        (_F, np.zeros((1, 4), np.float32), {}, r"rois must be \[R, 5\].*\(1, 4\)"),
        (_F, np.zeros((5,), np.float32), {}, r"rois must be \[R, 5\].*\(5,\)"),
        (np.zeros((2, 4, 4, 7), np.float32), _R, {}, r"channels \(7\) must be a multiple.*4"),
        (np.zeros((2, 0, 4, 8), np.float32), _R, {}, r"height must be >= 1.*\(2, 0, 4, 8\)"),
        (np.zeros((2, 4, 4, 8), np.int32), _R, {}, r"dtype.*int32"),
        (_F, np.zeros((1, 5), np.int32), {}, r"rois dtype.*int32"),
        (_F, _R, dict(output_size=0), r"output_size must be >= 1, got 0"),
        (_F, _R, dict(output_size=2.0), r"output_size must be an int .*, got 2.0"),
        (_F, _R, dict(output_size=True), r"output_size must be an int .*, got True"),
        (_F, _R, dict(output_size=(2, 0)), r"output_size must be >= 1, got \(2, 0\)"),
        (_F, _R, dict(output_size=(2, 2, 2)), r"pair \(kh, kw\).*got \(2, 2, 2\)"),
        (_F, _R, dict(output_size=(2, 3)), r"channels \(8\) must be a multiple of kh\*kw = 6"),
        (_F, _R, dict(sampling_ratio=1.5), r"sampling_ratio must be an int, got 1.5"),
        (_F, _R, dict(mode="max"), r"mode must be one of .*'max'"),
        (_F, _R, dict(spatial_scale=0.0), r"spatial_scale .* got 0.0"),
        (_F, _R, dict(spatial_scale=float("nan")), r"spatial_scale .* got nan"),
    ],
)
def test_static_errors(features, rois, kwargs, match):
    args = dict(output_size=2, spatial_scale=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ps_roi_pool_tf(features, rois, **args)


@pytest.mark.parametrize(
    "batch_index, shown", [(2.0, "2"), (-1.0, "-1"), (np.nan, "nan"), (-0.5, "-0.5")]
)
@pytest.mark.parametrize("in_function", [False, True])
def test_batch_index_out_of_range(batch_index, shown, in_function):
    rois = np.array([[0, 0, 0, 4, 4], [1, 0, 0, 4, 4], [batch_index, 0, 0, 4, 4]], np.float32)
    fn = lambda f, r: ps_roi_pool_tf(f, r, output_size=2, spatial_scale=1.0)
    if in_function:
        fn = tf.function(
            fn,
            input_signature=[
                tf.TensorSpec([None, None, None, 8], tf.float32),
                tf.TensorSpec([None, 5], tf.float32),
            ],
        )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"(?s)batch index.*B =.*2.*offending rows.*2.*values.*{shown}",
    ):
        fn(_F, rois)


@pytest.mark.parametrize(
    "features, rois, match",
    [
        (np.zeros((2, 4, 4, 7), np.float32), _R, r"(?s)channels must be a multiple.*2 4 4 7"),
        (np.zeros((2, 0, 4, 8), np.float32), _R, r"(?s)height and width must be >= 1.*2 0 4 8"),
        (np.zeros((4, 4, 8), np.float32), _R, r"\[4,4,8\] is not compatible with expected shape"),
        (
            _F,
            np.zeros((1, 4), np.float32),
            r"\[1,4\] is not compatible with expected shape \[\?,5\]",
        ),
    ],
)
def test_runtime_errors_with_unknown_shapes(features, rois, match):
    fn = tf.function(
        lambda f, r: ps_roi_pool_tf(f, r, output_size=2, spatial_scale=1.0),
        input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.float32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        fn(features, rois)


# --- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_converts_to_onnx_opset17_and_runs_in_onnxruntime(mode):
    # The exported serving graph contains the twin; it must survive tf2onnx (docs/ARCHITECTURE.md, "Export").
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    k, num_out = 3, 2
    sig = [
        tf.TensorSpec([None, None, None, k * k * num_out], tf.float32, name="features"),
        tf.TensorSpec([None, 5], tf.float32, name="rois"),
    ]
    fn = tf.function(
        lambda f, r: ps_roi_pool_tf(f, r, output_size=k, spatial_scale=0.25, mode=mode),
        input_signature=sig,
    )
    model, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=17)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed, (batch, height, width, num_rois) in enumerate([(2, 9, 14, 14), (1, 5, 3, 0)]):
        feats, rois = _make_case(
            seed, batch=batch, height=height, width=width, k=k, num_out=num_out
        )
        rois = rois[:num_rois]
        (out,) = session.run(None, {"features": feats, "rois": rois})
        assert out.shape == (num_rois, k, k, num_out)
        np.testing.assert_allclose(
            out, ps_roi_pool_reference(feats, rois, k, 0.25, mode), rtol=0, atol=TOL
        )
