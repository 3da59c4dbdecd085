"""Transforms: boxes and the pixels they cover move together; sizes follow the formula."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.data import transforms


def _painted(height, width, box_px):
    """uint8 [H, W, 3] zeros with the rectangle box_px = (y1, x1, y2, x2) (pixel edges) at 255."""
    image = np.zeros((height, width, 3), np.uint8)
    y1, x1, y2, x2 = box_px
    image[y1:y2, x1:x2] = 255
    return image


def _bounds(image, threshold=127):
    """Tight continuous box of the pixels brighter than threshold (any channel)."""
    ys, xs = np.nonzero(image.max(axis=-1) > threshold)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)


@pytest.mark.parametrize(
    "height, width, min_size, max_size, expected",
    [
        (300, 500, 600, 1000, (600, 1000)),  # shorter side to 600
        (300, 700, 600, 1000, (429, 1000)),  # longer side capped: scale = 1000 / 700
        (480, 640, 384, 512, (384, 512)),
        (640, 480, 256, 1000, (341, 256)),
        (256, 256, 256, 256, (256, 256)),
    ],
)
def test_resize_size_follows_formula(height, width, min_size, max_size, expected):
    image = np.zeros((height, width, 3), np.uint8)
    resized, scale = transforms.resize_image(image, min_size=min_size, max_size=max_size)
    reference = min(min_size / min(height, width), max_size / max(height, width))
    assert resized.dtype == tf.uint8 and tuple(resized.shape) == expected + (3,)
    assert tuple(np.round(np.array([height, width]) * reference).astype(int)) == expected
    assert scale.dtype == tf.float32 and abs(float(scale) - reference) < 1e-6


@pytest.mark.parametrize("min_size, max_size", [(32, 100), (64, 100), (16, 1000), (32, 40)])
def test_resize_if_needed_equals_resize(min_size, max_size):
    image = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    expected, expected_scale = transforms.resize_image(image, min_size=min_size, max_size=max_size)
    got, scale = transforms.resize_image_if_needed(image, min_size=min_size, max_size=max_size)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert float(scale) == float(expected_scale)


def test_resize_identity_keeps_pixels_and_accepts_tensor_sizes():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    resized, scale = transforms.resize_image(image, min_size=tf.constant(32), max_size=100)
    np.testing.assert_array_equal(resized.numpy(), image)
    assert float(scale) == 1.0
    with pytest.raises(ValueError, match=r"one image \[H, W, 3\], got shape \(1, 32, 48, 3\)"):
        transforms.resize_image(image[None], min_size=32, max_size=100)


@pytest.mark.parametrize("min_size, max_size", [(600, 1000), (150, 1000), (300, 400)])
@pytest.mark.parametrize("flip", [False, True])
def test_box_bounds_painted_pixels_after_resize_and_flip(min_size, max_size, flip):
    height, width, box_px = 300, 500, (50, 200, 120, 350)
    image = _painted(height, width, box_px)
    boxes = np.array(
        [[box_px[0] / height, box_px[1] / width, box_px[2] / height, box_px[3] / width]], np.float32
    )
    resized, _ = transforms.resize_image(image, min_size=min_size, max_size=max_size)
    if flip:
        seed = next(
            s
            for s in range(100)  # a seed whose draw flips
            if transforms.random_horizontal_flip(resized, boxes, seed=[0, s])[2]
        )
        resized, boxes, flipped = transforms.random_horizontal_flip(resized, boxes, seed=[0, seed])
        assert bool(flipped)
    resized = resized.numpy()
    h, w = resized.shape[:2]
    expected = np.asarray(boxes, np.float64)[0] * [h, w, h, w]
    # Bilinear resampling blurs the edge by at most one pixel at these scales.
    np.testing.assert_allclose(_bounds(resized), expected, atol=1.0)


def test_flip_moves_pixels_exactly():
    image = _painted(20, 30, (2, 3, 7, 11))
    boxes = np.array([[2 / 20, 3 / 30, 7 / 20, 11 / 30]], np.float32)
    seeds = [[1, s] for s in range(40)]
    outcomes = [transforms.random_horizontal_flip(image, boxes, seed=s) for s in seeds]
    flipped = [bool(o[2]) for o in outcomes]
    assert 10 < sum(flipped) < 30  # about half
    for out_image, out_boxes, was_flipped in outcomes:
        expected = np.array([[2 / 20, 1 - 11 / 30, 7 / 20, 1 - 3 / 30]]) if was_flipped else boxes
        np.testing.assert_allclose(out_boxes.numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(
            _bounds(out_image.numpy()),
            np.asarray(out_boxes.numpy()[0], np.float64) * [20, 30, 20, 30],
            atol=1e-4,
        )
    # the same seed gives the same decision
    again = transforms.random_horizontal_flip(image, boxes, seed=seeds[0])
    assert bool(again[2]) == flipped[0]


def test_flip_boxes_is_an_involution():
    boxes = np.random.default_rng(1).uniform(0, 1, (5, 4)).astype(np.float32)
    twice = transforms.flip_boxes_horizontally(transforms.flip_boxes_horizontally(boxes))
    np.testing.assert_allclose(twice.numpy(), boxes, atol=1e-6)


def test_pad_to_multiple():
    image = np.arange(17 * 33 * 3, dtype=np.int32).reshape(17, 33, 3)
    padded = transforms.pad_to_multiple(image, 16).numpy()
    assert padded.shape == (32, 48, 3)
    np.testing.assert_array_equal(padded[:17, :33], image)
    assert not padded[17:].any() and not padded[:, 33:].any()
    batch = transforms.pad_to_multiple(np.ones((2, 32, 16, 3), np.uint8), 16)
    assert tuple(batch.shape) == (2, 32, 16, 3)  # already multiples: unchanged
    with pytest.raises(ValueError, match=r"got \(5, 5\)"):
        transforms.pad_to_multiple(np.ones((5, 5)), 16)


def test_photometric_jitter_is_seeded_and_changes_colors():
    image = np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    a = transforms.photometric_jitter(image, seed=[3, 4]).numpy()
    b = transforms.photometric_jitter(image, seed=[3, 4]).numpy()
    c = transforms.photometric_jitter(image, seed=[3, 5]).numpy()
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image) and not np.array_equal(a, c)


def test_choose_scale_draws_every_scale():
    scales = [400, 500, 600, 700, 800]
    draws = [int(transforms.choose_scale(scales, seed=[0, s])) for s in range(60)]
    assert set(draws) == set(scales)
    assert int(transforms.choose_scale(scales, seed=[0, 7])) == draws[7]


def test_pad_ground_truth():
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    out = transforms.pad_ground_truth(
        4, boxes=boxes, classes=np.array([3, 1], np.int32), flags=np.array([True, False])
    )
    np.testing.assert_array_equal(out["boxes"][:2], boxes)
    np.testing.assert_array_equal(out["boxes"][2:], -np.ones((2, 4)))
    np.testing.assert_array_equal(out["classes"], [3, 1, -1, -1])
    np.testing.assert_array_equal(out["flags"], [True, False, False, False])
    np.testing.assert_array_equal(out["mask"], [True, True, False, False])
    assert out["boxes"].shape.as_list() == [4, 4]  # fixed: static G
    empty = transforms.pad_ground_truth(2, boxes=np.zeros((0, 4), np.float32))
    np.testing.assert_array_equal(empty["mask"], [False, False])


def test_pad_ground_truth_never_drops_a_box():
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    classes = np.array([3, 1, 2], np.int32)
    # Fixed rows too few for the image: an error, not the first G rows.
    with pytest.raises(tf.errors.InvalidArgumentError, match="more boxes than the 2 padded rows"):
        transforms.pad_ground_truth(2, boxes=boxes, classes=classes)
    # Not fixed: max(N, G) rows, every box kept.
    grown = transforms.pad_ground_truth(2, False, boxes=boxes, classes=classes)
    np.testing.assert_array_equal(grown["boxes"], boxes)
    np.testing.assert_array_equal(grown["classes"], classes)
    np.testing.assert_array_equal(grown["mask"], [True, True, True])
    padded = transforms.pad_ground_truth(5, False, boxes=boxes, classes=classes)
    np.testing.assert_array_equal(padded["classes"], [3, 1, 2, -1, -1])
    np.testing.assert_array_equal(padded["mask"], [True] * 3 + [False] * 2)
