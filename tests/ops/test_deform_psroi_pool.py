"""Deformable PS-RoI pooling: the compiled op (impl="custom") and the stock-op twin (impl="tf")
against the float64 NumPy reference (tests/helpers/deform_reference.py), each other (forward and
gradients to 1e-5), numeric gradients (float64), and the plain bilinear PS-RoI op at zero
offsets. Random offsets, RoIs partly outside the map, k = 3 and 7, batch > 1, offset groups."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.deform_reference import deform_ps_roi_pool_reference, numeric_gradient
from helpers.psroi_reference import ps_roi_pool_reference

from rfcn_tf.ops.deform_psroi_pool import (
    custom_op_available,
    custom_op_load_error,
    deform_ps_roi_pool,
)
from rfcn_tf.ops.psroi_pool import ps_roi_pool

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _require_compiled_op():
    assert custom_op_available(), f"compiled op did not load: {custom_op_load_error()}"


def _case(
    seed,
    *,
    batch=2,
    height=9,
    width=11,
    k=3,
    num_out=4,
    scale=0.5,
    num=10,
    groups=1,
    offset_scale=1.5,
    dtype=np.float32,
):
    """features, rois (partly outside the image, one reversed, one tiny), offsets, output grad."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, height, width, k * k * num_out)).astype(dtype)
    img_h, img_w = height / scale, width / scale
    y = np.sort(rng.uniform(-0.3 * img_h, 1.3 * img_h, (num, 2)), axis=1)
    x = np.sort(rng.uniform(-0.3 * img_w, 1.3 * img_w, (num, 2)), axis=1)
    rows = np.column_stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]])
    rows = np.vstack(
        [
            rows,
            [
                [img_h * 0.8, img_w * 0.7, img_h * 0.2, img_w * 0.1],  # reversed
                [2.0, 3.0, 3.5, 4.0],  # tiny
                [0, 0, img_h, img_w],
            ],
        ]
    )  # whole image
    batch_index = rng.integers(0, batch, len(rows))
    batch_index[:batch] = np.arange(batch)
    rois = np.column_stack([batch_index, rows]).astype(np.float32)
    shape = (len(rois), k, k, 2) if groups == 1 else (len(rois), k, k, groups, 2)
    offsets = (offset_scale * rng.standard_normal(shape)).astype(dtype)
    grad = rng.standard_normal((len(rois), k, k, num_out)).astype(dtype)
    return feats, rois, offsets, grad


def _run(feats, rois, offsets, grad, impl, k, scale, sr=2, trans_std=0.1):
    f = tf.constant(feats)
    o = tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch([f, o])
        out = deform_ps_roi_pool(
            f,
            tf.constant(rois),
            o,
            output_size=k,
            spatial_scale=scale,
            sampling_ratio=sr,
            trans_std=trans_std,
            impl=impl,
        )
        loss = tf.reduce_sum(out * grad)
    gf, go = tape.gradient(loss, [f, o])
    return out.numpy(), gf.numpy(), go.numpy()


@pytest.mark.parametrize("k, sr, groups", [(3, 2, 1), (7, 2, 1), (3, 3, 4), (3, 1, 2)])
@pytest.mark.parametrize("impl", ["custom", "tf"])
def test_forward_matches_numpy_reference(impl, k, sr, groups):
    feats, rois, offsets, _ = _case(k * 10 + sr, k=k, groups=groups)
    out, _, _ = _run(
        feats, rois, offsets, np.zeros((len(rois), k, k, 4), np.float32), impl, k, 0.5, sr
    )
    want = deform_ps_roi_pool_reference(feats, rois, offsets, k, 0.5, sr, 0.1)
    np.testing.assert_allclose(out, want, atol=TOL, rtol=0)
    assert np.abs(want).max() > 0.1


@pytest.mark.parametrize("k, groups", [(3, 1), (7, 1), (3, 4)])
def test_custom_and_twin_agree_forward_and_gradients(k, groups):
    feats, rois, offsets, grad = _case(100 + k, k=k, groups=groups, batch=3)
    custom = _run(feats, rois, offsets, grad, "custom", k, 0.5)
    twin = _run(feats, rois, offsets, grad, "tf", k, 0.5)
    for a, b, label in zip(custom, twin, ("output", "grad features", "grad offsets")):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL, err_msg=label)
    assert np.abs(custom[2]).max() > 1e-2  # the offsets do receive a gradient


@pytest.mark.parametrize(
    "num_out, groups, num",
    [(21, 1, 90), (21, 1, 12), (24, 2, 12), (32, 1, 12), (9, 3, 12), (40, 1, 6)],
)
def test_custom_and_twin_agree_on_wide_channel_slices(num_out, groups, num):
    """float32 with C / G = 21, 12, 32, 3 channels per group: the register-blocked CPU kernels
    (1-4 registers of 8 lanes, masked tails, padded dense scratch; 90 RoIs on 2 images at 21
    take the dense forward) against the twin; C / G = 40 runs the portable loops."""
    feats, rois, offsets, grad = _case(
        300 + num_out, k=7, num_out=num_out, groups=groups, num=num, height=12, width=14
    )
    custom = _run(feats, rois, offsets, grad, "custom", 7, 0.5)
    twin = _run(feats, rois, offsets, grad, "tf", 7, 0.5)
    for a, b, label in zip(custom, twin, ("output", "grad features", "grad offsets")):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL, err_msg=label)
    assert np.abs(custom[2]).max() > 1e-2
    again = _run(feats, rois, offsets, grad, "custom", 7, 0.5)
    for a, b in zip(custom, again):  # deterministic (fixed summation order)
        assert np.array_equal(a, b)


@pytest.mark.parametrize("k", [3, 7])
def test_zero_offsets_equal_the_bilinear_ps_roi_pool(k):
    feats, rois, offsets, _ = _case(7 + k, k=k)
    zero = np.zeros_like(offsets)
    plain = ps_roi_pool(
        tf.constant(feats),
        tf.constant(rois),
        output_size=k,
        spatial_scale=0.5,
        mode="bilinear",
        sampling_ratio=2,
        impl="custom",
    ).numpy()
    for impl in ("custom", "tf"):
        out = deform_ps_roi_pool(
            feats, rois, zero, output_size=k, spatial_scale=0.5, sampling_ratio=2, impl=impl
        ).numpy()
        np.testing.assert_allclose(out, plain, atol=1e-6, rtol=0, err_msg=impl)
    np.testing.assert_allclose(
        deform_ps_roi_pool_reference(feats, rois, zero, k, 0.5, 2, 0.1),
        ps_roi_pool_reference(feats, rois, k, 0.5, "bilinear", 2),
        atol=1e-12,
    )


@pytest.mark.parametrize("impl", ["custom", "tf"])
@pytest.mark.parametrize("groups", [1, 2])
def test_numeric_gradients_float64(impl, groups):
    feats, rois, offsets, _ = _case(
        5, batch=2, height=5, width=6, k=3, num_out=2, num=3, groups=groups, dtype=np.float64
    )

    @tf.function  # compute_gradient calls it once per element and direction
    def fn(f, o):
        return deform_ps_roi_pool(
            f, rois, o, output_size=3, spatial_scale=0.5, trans_std=0.1, impl=impl
        )

    theoretical, numerical = tf.test.compute_gradient(fn, [feats, offsets], delta=1e-6)
    for t, n, label in zip(theoretical, numerical, ("features", "offsets")):
        np.testing.assert_allclose(t, n, atol=1e-6, rtol=1e-5, err_msg=label)
        assert np.abs(t).max() > 1e-3


def test_offset_gradient_matches_numeric_gradient_of_the_reference():
    feats, rois, offsets, grad = _case(
        11, batch=2, height=6, width=7, k=3, num_out=2, num=3, dtype=np.float64
    )
    _, _, go = _run(feats, rois, offsets, grad, "custom", 3, 0.5)
    want = numeric_gradient(
        lambda o: deform_ps_roi_pool_reference(feats, rois, o, 3, 0.5, 2, 0.1), offsets, grad
    )
    np.testing.assert_allclose(go, want, atol=1e-6, rtol=1e-5)


def test_backward_is_deterministic_and_trans_std_scales_the_shift():
    feats, rois, offsets, grad = _case(21, k=7, num=40)
    a = _run(feats, rois, offsets, grad, "custom", 7, 0.5)
    b = _run(feats, rois, offsets, grad, "custom", 7, 0.5)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    half = _run(feats, rois, offsets * 2, grad, "custom", 7, 0.5, trans_std=0.05)
    np.testing.assert_allclose(half[0], a[0], atol=1e-5)


def test_unknown_shapes_inside_tf_function():
    feats, rois, offsets, _ = _case(3, k=3)
    spec = [
        tf.TensorSpec([None, None, None, 36]),
        tf.TensorSpec([None, 5]),
        tf.TensorSpec([None, 3, 3, 2]),
    ]
    for impl in ("custom", "tf"):
        fn = tf.function(
            lambda f, r, o, impl=impl: deform_ps_roi_pool(
                f, r, o, output_size=3, spatial_scale=0.5, impl=impl
            ),
            input_signature=spec,
        )
        out = fn(feats, rois, offsets)
        assert out.shape == (len(rois), 3, 3, 4)
        assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, 3, 3, 4]


def test_bad_inputs_name_the_culprit():
    feats, rois, offsets, _ = _case(4, k=3)
    bad_rois = rois.copy()
    bad_rois[1, 0] = 5
    for impl in ("custom", "tf"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="batch"):
            deform_ps_roi_pool(feats, bad_rois, offsets, output_size=3, impl=impl)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="offsets"):
        deform_ps_roi_pool(feats, rois, offsets[:, :2], output_size=3, impl="custom")
    with pytest.raises(ValueError, match="trans_std"):
        deform_ps_roi_pool(feats, rois, offsets, output_size=3, trans_std=float("nan"))
    with pytest.raises(ValueError, match="impl"):
        deform_ps_roi_pool(feats, rois, offsets, output_size=3, impl="cuda")
