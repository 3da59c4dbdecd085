"""Tests for rfcn_tf.ops.boxes: hand-computed cases and a float64 NumPy IoU reference."""

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.ops import boxes as B


def _np_iou(a, b):
    """Float64 reference from the definition (0 when either box is empty)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a):
        for j, (by1, bx1, by2, bx2) in enumerate(b):
            area_a = max(ay2 - ay1, 0) * max(ax2 - ax1, 0)
            area_b = max(by2 - by1, 0) * max(bx2 - bx1, 0)
            if area_a <= 0 or area_b <= 0:
                continue
            ih = max(min(ay2, by2) - max(ay1, by1), 0)
            iw = max(min(ax2, bx2) - max(ax1, bx1), 0)
            inter = ih * iw
            out[i, j] = inter / (area_a + area_b - inter)
    return out


def test_area_known_and_inverted():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [5, 5, 4, 4]], np.float32)
    np.testing.assert_allclose(B.area(boxes).numpy(), [6.0, 0.0, 0.0])


def test_iou_known_cases():
    a = [[0, 0, 10, 10]]
    b = [
        [0, 0, 10, 10],  # identical -> 1
        [0, 5, 10, 15],  # half overlap: 50 / 150
        [20, 20, 30, 30],  # disjoint -> 0
        [2, 2, 4, 4],  # contained: 4 / 100
        [0, 10, 10, 20],  # touching edge -> 0
        [-1, -1, -1, -1],
    ]  # padding row -> 0
    got = B.iou(np.array(a, np.float32), np.array(b, np.float32)).numpy()
    np.testing.assert_allclose(got, [[1.0, 1 / 3, 0.0, 0.04, 0.0, 0.0]], rtol=1e-6)


def test_iou_zero_area_boxes_match_nothing_even_themselves():
    z = np.array([[3, 3, 3, 8], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(B.iou(z, z).numpy(), np.zeros((2, 2)))


def test_iou_random_vs_reference_and_batched():
    rng = np.random.default_rng(0)

    def rand_boxes(n):
        yx = rng.uniform(0, 50, (n, 2))
        hw = rng.uniform(0, 30, (n, 2))
        return np.concatenate([yx, yx + hw], 1)

    a = np.stack([rand_boxes(7), rand_boxes(7)])
    b = np.stack([rand_boxes(5), rand_boxes(5)])
    got = B.iou(a, b).numpy()  # float64 in, float64 out
    assert got.dtype == np.float64 and got.shape == (2, 7, 5)
    for i in range(2):
        np.testing.assert_allclose(got[i], _np_iou(a[i], b[i]), rtol=1e-12, atol=1e-12)
    got32 = B.iou(a.astype(np.float32), b.astype(np.float32)).numpy()
    np.testing.assert_allclose(got32, got, atol=1e-5)


def test_iou_gradient_finite_with_padding():
    a = tf.constant([[0.0, 0.0, 4.0, 4.0], [-1.0, -1.0, -1.0, -1.0]])
    b = tf.constant([[1.0, 1.0, 5.0, 5.0]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        y = tf.reduce_sum(B.iou(a, b))
    g = tape.gradient(y, a).numpy()
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[1], 0.0)


def test_clip_boxes_per_image_shapes():
    boxes = np.array(
        [[[-5, -5, 20, 30], [2, 3, 4, 5]], [[-5, -5, 20, 30], [12, 3, 40, 5]]], np.float32
    )
    shapes = np.array([[10, 25], [15, 8]], np.int32)
    got = B.clip_boxes(boxes, shapes).numpy()
    np.testing.assert_array_equal(
        got, [[[0, 0, 10, 25], [2, 3, 4, 5]], [[0, 0, 15, 8], [12, 3, 15, 5]]]
    )
    # a single (h, w) for an unbatched [N, 4]
    np.testing.assert_array_equal(B.clip_boxes(boxes[0], [10, 25]).numpy(), got[0])


def test_normalize_denormalize_roundtrip():
    boxes = np.array([[[10, 20, 30, 40]], [[1, 2, 3, 4]]], np.float64)
    shapes = np.array([[100, 200], [10, 20]])
    norm = B.normalize_boxes(boxes, shapes).numpy()
    np.testing.assert_allclose(norm, [[[0.1, 0.1, 0.3, 0.2]], [[0.1, 0.1, 0.3, 0.2]]])
    np.testing.assert_allclose(B.denormalize_boxes(norm, shapes).numpy(), boxes)


def test_format_converters():
    yxyx = np.array([[1.0, 2.0, 5.0, 10.0]], np.float32)
    np.testing.assert_array_equal(B.yxyx_to_xywh(yxyx).numpy(), [[2, 1, 8, 4]])
    np.testing.assert_array_equal(B.xywh_to_yxyx([[2.0, 1.0, 8.0, 4.0]]).numpy(), yxyx)
    np.testing.assert_array_equal(B.yxyx_to_xyxy(yxyx).numpy(), [[2, 1, 10, 5]])
    np.testing.assert_array_equal(B.xyxy_to_yxyx([[2.0, 1.0, 10.0, 5.0]]).numpy(), yxyx)


def test_filter_small_boxes():
    boxes = np.array(
        [[0, 0, 5, 5], [0, 0, 2, 9], [0, 0, 9, 2], [3, 3, 3, 3], [4, 4, 2, 6]], np.float32
    )
    np.testing.assert_array_equal(
        B.filter_small_boxes(boxes, 3.0).numpy(), [True, False, False, False, False]
    )
    # min_size 0 still drops degenerate boxes
    np.testing.assert_array_equal(
        B.filter_small_boxes(boxes, 0.0).numpy(), [True, True, True, False, False]
    )


def test_bad_shape_names_the_culprit():
    with pytest.raises(ValueError, match=r"boxes must be \[\.\.\., 4\].*\(2, 3\)"):
        B.area(np.zeros((2, 3), np.float32))
