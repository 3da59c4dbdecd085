"""Tests for rfcn_tf.model.anchors.AnchorGenerator against hand-computed anchors."""

import math

import numpy as np
import tensorflow as tf

from rfcn_tf.model.anchors import AnchorGenerator


def test_single_anchor_grid_hand_computed():
    gen = AnchorGenerator(stride=16, scales=(32,), aspect_ratios=(1.0,))
    got = gen(2, 3).numpy()
    # centres ((y + 0.5) * 16, (x + 0.5) * 16), half size 16; order y-major then x
    expected = [[cy - 16, cx - 16, cy + 16, cx + 16] for cy in (8, 24) for cx in (8, 24, 40)]
    np.testing.assert_allclose(got, expected)
    assert got.dtype == np.float32


def test_aspect_ratio_is_height_over_width_and_order():
    gen = AnchorGenerator(stride=16, scales=(64, 128), aspect_ratios=(0.5, 2.0))
    assert gen.num_anchors_per_location == 4
    got = gen(1, 1).numpy()
    r = math.sqrt(2.0)
    # scales outer, ratios inner; ratio 0.5 -> h = s / sqrt 2, w = s * sqrt 2
    sizes = [(64 / r, 64 * r), (64 * r, 64 / r), (128 / r, 128 * r), (128 * r, 128 / r)]
    expected = [[8 - h / 2, 8 - w / 2, 8 + h / 2, 8 + w / 2] for h, w in sizes]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    hs, ws = got[:, 2] - got[:, 0], got[:, 3] - got[:, 1]
    np.testing.assert_allclose(hs * ws, [64**2, 64**2, 128**2, 128**2], rtol=1e-5)


def test_lines_up_with_rpn_reshape():
    gen = AnchorGenerator()  # 9 anchors
    h, w, a = 3, 4, gen.num_anchors_per_location
    anchors = gen(h, w).numpy().reshape(h, w, a, 4)
    cell = gen(1, 1).numpy()
    for y in range(h):
        for x in range(w):
            shift = np.array([y, x, y, x], np.float32) * 16
            np.testing.assert_allclose(anchors[y, x], cell + shift)


def test_tensor_sizes_inside_tf_function_without_retrace():
    gen = AnchorGenerator()
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
    def f(h, w):
        traces.append(1)
        return gen(h, w)

    for h, w in [(2, 3), (5, 1), (4, 4)]:
        np.testing.assert_allclose(f(h, w).numpy(), gen(h, w).numpy())
        assert f(h, w).shape == (h * w * 9, 4)
    assert len(traces) == 1


def test_get_config_equals_kwargs():
    kwargs = {"stride": 8, "scales": (16.0, 32.0), "aspect_ratios": (1.0,)}
    gen = AnchorGenerator(**kwargs)
    assert gen.get_config() == kwargs
    np.testing.assert_array_equal(
        AnchorGenerator.from_config(gen.get_config())(2, 2).numpy(), gen(2, 2).numpy()
    )
