"""Augmentations: boxes follow the pixels exactly (tight boxes of painted masks), seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.data import augment

H, W = 24, 40
# Three rectangles (pixel edges y1, x1, y2, x2), each painted in its own channel value.
RECTS = [(2, 3, 9, 14), (12, 20, 22, 37), (5, 25, 11, 30)]


def _painted():
    image = np.zeros((H, W, 3), np.uint8)
    for i, (y1, x1, y2, x2) in enumerate(RECTS):
        image[y1:y2, x1:x2, i] = 255
    boxes = np.array([[y1 / H, x1 / W, y2 / H, x2 / W] for y1, x1, y2, x2 in RECTS], np.float32)
    return image, boxes


def _mask_boxes(image):
    """Normalized tight box of each channel's painted pixels (None where nothing is left)."""
    h, w = image.shape[:2]
    out = []
    for c in range(3):
        ys, xs = np.nonzero(image[..., c] > 127)
        out.append(
            None
            if ys.size == 0
            else np.array([ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w])
        )
    return out


def _assert_boxes_follow_pixels(image, boxes, labels=(0, 1, 2)):
    truth = _mask_boxes(np.asarray(image))
    for box, label in zip(np.asarray(boxes), np.asarray(labels)):
        np.testing.assert_allclose(box, truth[label], atol=1e-6)


def test_vertical_flip_moves_pixels_exactly_and_is_seeded():
    image, boxes = _painted()
    outcomes = [augment.random_vertical_flip(image, boxes, seed=[2, s]) for s in range(30)]
    flips = [bool(o[2]) for o in outcomes]
    assert 5 < sum(flips) < 25
    for out_image, out_boxes, _ in outcomes:
        _assert_boxes_follow_pixels(out_image, out_boxes)
    again = augment.random_vertical_flip(image, boxes, seed=[2, 0])
    assert bool(again[2]) == flips[0]


def test_rot90_every_quarter_turn_moves_pixels_exactly():
    image, boxes = _painted()
    seen = set()
    for s in range(40):
        out_image, out_boxes, k = augment.random_rot90(image, boxes, seed=[5, s])
        seen.add(int(k))
        expected_hw = (H, W) if int(k) % 2 == 0 else (W, H)
        assert tuple(out_image.shape[:2]) == expected_hw
        _assert_boxes_follow_pixels(out_image, out_boxes)
    assert seen == {0, 1, 2, 3}
    four = augment.rotate_boxes_90(augment.rotate_boxes_90(boxes, 3), 1)
    np.testing.assert_allclose(four.numpy(), boxes, atol=1e-6)


@pytest.mark.parametrize("min_visible", [0.3, 0.7])
def test_random_crop_boxes_exact_and_never_empty(min_visible):
    image, boxes = _painted()
    labels = np.arange(3, dtype=np.int32)
    changed = 0
    for s in range(30):
        out_image, out_boxes, out_labels = augment.random_crop(
            image, boxes, labels, seed=[7, s], min_visible=min_visible, area_range=(0.2, 1.0)
        )
        out_image, out_boxes = out_image.numpy(), out_boxes.numpy()
        changed += out_image.shape[:2] != (H, W)
        truth = _mask_boxes(out_image)
        for box, label in zip(out_boxes, out_labels.numpy()):
            assert box[2] > box[0] and box[3] > box[1]  # never an empty, labelled box
            np.testing.assert_allclose(box, truth[label], atol=1e-6)  # clipped box = pixels
            y1, x1, y2, x2 = RECTS[label]
            visible = (
                (box[2] - box[0]) * out_image.shape[0] * (box[3] - box[1]) * out_image.shape[1]
            ) / ((y2 - y1) * (x2 - x1))
            assert visible >= min_visible - 1e-6
        # A rectangle whose visible share is below min_visible has lost its box.
        for label in set(range(3)) - set(out_labels.numpy().tolist()):
            if truth[label] is not None:
                y1, x1, y2, x2 = RECTS[label]
                t = truth[label]
                share = (
                    (t[2] - t[0]) * out_image.shape[0] * (t[3] - t[1]) * out_image.shape[1]
                ) / ((y2 - y1) * (x2 - x1))
                assert share < min_visible + 1e-6
    assert changed > 10
    a = augment.random_crop(image, boxes, labels, seed=[7, 3])
    b = augment.random_crop(image, boxes, labels, seed=[7, 3])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_crop_without_boxes_and_scale_jitter():
    image, _ = _painted()
    out_image, out_boxes = augment.random_crop(image, tf.zeros([0, 4]), seed=[1, 1])
    assert out_boxes.shape == (0, 4) and out_image.shape[2] == 3
    values = [int(augment.jitter_scale(600, seed=[0, s], low=0.8, high=1.25)) for s in range(50)]
    assert min(values) >= 480 and max(values) <= 750 and len(set(values)) > 20
    assert int(augment.jitter_scale(600, seed=[0, 9], low=0.8, high=1.25)) == values[9]
    with pytest.raises(ValueError, match=r"data.scale_jitter must be \[low, high\]"):
        augment.jitter_scale(600, seed=[0, 0], low=1.2, high=0.8)


def test_pipeline_applies_the_geometric_options(tmp_path):
    from helpers.data_fixtures import data_config, make_voc

    from rfcn_tf.data.errors import DataError
    from rfcn_tf.data.pipeline import build_dataset

    images = {
        f"img_{i}": (40, 60, [("cat", 11, 5, 30, 20, 0), ("dog", 35, 22, 58, 38, 0)])
        for i in range(4)
    }
    root = make_voc(tmp_path / "voc", images=images, splits={"train": list(images)})
    base = dict(
        source="voc", voc_root=str(root), scales=[40], max_size=80, max_boxes=4, random_flip=False
    )
    plain = build_dataset(data_config(**base), split="train", training=True, batch_size=1)
    assert {tuple(f["image_shapes"].numpy()[0]) for f in plain.take(8)} == {(40, 60)}
    cfg = data_config(
        **base,
        rot90=True,
        vertical_flip=True,
        scale_jitter=[0.8, 1.25],
        random_crop=True,
        crop_min_visible=0.6,
    )
    shapes, kept = set(), []
    for f in build_dataset(cfg, split="train", training=True, batch_size=1).take(16):
        shapes.add(tuple(f["image_shapes"].numpy()[0]))
        mask = f["gt_mask"].numpy()[0]
        boxes = f["gt_boxes"].numpy()[0][mask]
        h, w = f["image_shapes"].numpy()[0]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= h).all() and (boxes[:, 3] <= w).all()
        kept.append(int(mask.sum()))
    assert any(hw[0] > hw[1] for hw in shapes) and len(shapes) > 3  # rotated, jittered
    assert min(kept) < 2 <= max(kept)  # crops drop boxes that are mostly outside
    with pytest.raises(DataError, match=r"data.scale_jitter must be \[low, high\]"):
        build_dataset(
            data_config(**base, scale_jitter=[1.2]), split="train", training=True, batch_size=1
        )
