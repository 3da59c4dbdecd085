"""Deformable convolution (DCN v1, modulated DCN v2): the compiled im2col path (impl="custom")
and the stock-op twin (impl="tf") against the float64 NumPy reference, each other (forward and
gradients to 1e-5), numeric gradients (float64) w.r.t. input, offsets, mask and filters, and
tf.nn.conv2d at zero offsets / mask 1 (strides, dilations, SAME / VALID / explicit padding)."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.deform_reference import conv_output_size, deform_conv2d_reference, numeric_gradient

from rfcn_tf.ops.deform_conv import deform_conv2d
from rfcn_tf.ops.deform_psroi_pool import custom_op_available, custom_op_load_error

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _require_compiled_op():
    assert custom_op_available(), f"compiled op did not load: {custom_op_load_error()}"


def _case(
    seed,
    *,
    batch=2,
    height=7,
    width=8,
    cin=3,
    cout=4,
    k=(3, 3),
    strides=(1, 1),
    dilations=(1, 1),
    padding="SAME",
    offset_scale=1.5,
    dtype=np.float32,
):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, cin)).astype(dtype)
    w = (rng.standard_normal((k[0], k[1], cin, cout)) / 3).astype(dtype)
    pads = (padding, padding) if isinstance(padding, str) else padding
    out_h, _ = conv_output_size(height, k[0], strides[0], dilations[0], pads[0])
    out_w, _ = conv_output_size(width, k[1], strides[1], dilations[1], pads[1])
    taps = k[0] * k[1]
    offsets = (offset_scale * rng.standard_normal((batch, out_h, out_w, 2 * taps))).astype(dtype)
    mask = rng.uniform(0, 1, (batch, out_h, out_w, taps)).astype(dtype)
    grad = rng.standard_normal((batch, out_h, out_w, cout)).astype(dtype)
    return x, offsets, w, mask, grad


def _run(x, offsets, w, mask, grad, impl, **conv):
    tensors = [tf.constant(v) for v in (x, offsets, w)]
    m = None if mask is None else tf.constant(mask)
    with tf.GradientTape() as tape:
        tape.watch(tensors + ([] if m is None else [m]))
        out = deform_conv2d(tensors[0], tensors[1], tensors[2], mask=m, impl=impl, **conv)
        loss = tf.reduce_sum(out * grad)
    grads = tape.gradient(loss, tensors + ([] if m is None else [m]))
    return [out.numpy()] + [g.numpy() for g in grads]


CONFIGS = [
    {"strides": (1, 1), "dilations": (1, 1), "padding": "SAME"},
    {"strides": (2, 2), "dilations": (1, 1), "padding": "SAME"},
    {"strides": (1, 2), "dilations": (2, 1), "padding": "VALID"},
    {"strides": (1, 1), "dilations": (1, 1), "padding": ((2, 0), (1, 1))},
]


@pytest.mark.parametrize("conv", CONFIGS)
@pytest.mark.parametrize("impl", ["custom", "tf"])
@pytest.mark.parametrize("modulated", [False, True])
def test_forward_matches_numpy_reference(impl, conv, modulated):
    x, offsets, w, mask, _ = _case(3, **conv)
    mask = mask if modulated else None
    out = deform_conv2d(x, offsets, w, mask=mask, impl=impl, **conv).numpy()
    want = deform_conv2d_reference(x, offsets, w, mask, **conv)
    np.testing.assert_allclose(out, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("conv", CONFIGS)
def test_zero_offsets_and_unit_mask_equal_conv2d(conv):
    x, offsets, w, mask, _ = _case(5, **conv)
    padding = conv["padding"]
    tf_padding = padding if isinstance(padding, str) else [[0, 0], *padding, [0, 0]]
    plain = tf.nn.conv2d(
        x, w, strides=conv["strides"], dilations=conv["dilations"], padding=tf_padding
    ).numpy()
    zero = np.zeros_like(offsets)
    for impl in ("custom", "tf"):
        for m in (None, np.ones_like(mask)):
            out = deform_conv2d(x, zero, w, mask=m, impl=impl, **conv).numpy()
            np.testing.assert_allclose(out, plain, atol=1e-5, rtol=1e-5, err_msg=impl)


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("conv", CONFIGS[:3])
def test_custom_and_twin_agree_forward_and_gradients(conv, modulated):
    x, offsets, w, mask, grad = _case(7, batch=3, cin=5, **conv)
    mask = mask if modulated else None
    custom = _run(x, offsets, w, mask, grad, "custom", **conv)
    twin = _run(x, offsets, w, mask, grad, "tf", **conv)
    labels = ("output", "grad input", "grad offsets", "grad filters", "grad mask")
    for a, b, label in zip(custom, twin, labels):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL, err_msg=label)
    assert np.abs(custom[2]).max() > 1e-2


@pytest.mark.parametrize("impl", ["custom", "tf"])
def test_numeric_gradients_float64(impl):
    x, offsets, w, mask, _ = _case(9, batch=1, height=4, width=5, cin=2, cout=3, dtype=np.float64)

    @tf.function  # compute_gradient calls it once per element and direction
    def fn(x_, o_, w_, m_):
        return deform_conv2d(x_, o_, w_, mask=m_, strides=1, padding="SAME", impl=impl)

    theoretical, numerical = tf.test.compute_gradient(fn, [x, offsets, w, mask], delta=1e-6)
    for t, n, label in zip(theoretical, numerical, ("input", "offsets", "filters", "mask")):
        np.testing.assert_allclose(t, n, atol=1e-6, rtol=1e-5, err_msg=label)
        assert np.abs(t).max() > 1e-3


def test_offset_and_mask_gradients_match_numeric_gradient_of_the_reference():
    x, offsets, w, mask, grad = _case(
        13, batch=1, height=4, width=5, cin=2, cout=2, dtype=np.float64
    )
    _, _, go, _, gm = _run(x, offsets, w, mask, grad, "custom")
    np.testing.assert_allclose(
        go,
        numeric_gradient(lambda o: deform_conv2d_reference(x, o, w, mask), offsets, grad),
        atol=1e-6,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        gm,
        numeric_gradient(lambda m: deform_conv2d_reference(x, offsets, w, m), mask, grad),
        atol=1e-6,
        rtol=1e-5,
    )


def test_backward_is_deterministic():
    x, offsets, w, mask, grad = _case(15, batch=2, height=12, width=13, cin=64, cout=8)
    a = _run(x, offsets, w, mask, grad, "custom")
    b = _run(x, offsets, w, mask, grad, "custom")
    for u, v in zip(a, b):
        assert np.array_equal(u, v)


def test_unknown_shapes_inside_tf_function():
    x, offsets, w, mask, _ = _case(17)
    spec = [
        tf.TensorSpec([None, None, None, 3]),
        tf.TensorSpec([None, None, None, 18]),
        tf.TensorSpec([None, None, None, 9]),
    ]
    for impl in ("custom", "tf"):
        fn = tf.function(
            lambda x_, o_, m_, impl=impl: deform_conv2d(x_, o_, w, mask=m_, impl=impl),
            input_signature=spec,
        )
        np.testing.assert_allclose(
            fn(x, offsets, mask).numpy(), deform_conv2d_reference(x, offsets, w, mask), atol=TOL
        )


def test_bad_inputs_name_the_culprit():
    x, offsets, w, mask, _ = _case(19)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="offsets"):
        deform_conv2d(x, offsets[..., :4], w, impl="custom")
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="mask"):
        deform_conv2d(x, offsets, w, mask=mask[..., :3], impl="custom")
    with pytest.raises(ValueError, match="padding"):
        deform_conv2d(x, offsets, w, padding="FULL")
    with pytest.raises(ValueError, match="strides"):
        deform_conv2d(x, offsets, w, strides=0)
