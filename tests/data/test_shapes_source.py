"""The procedural shapes dataset: determinism, tight boxes, placement rules, masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from helpers.data_fixtures import data_config

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_source
from rfcn_tf.data.sources import shapes


def _source(split="train", **kwargs):
    kwargs.setdefault("image_size", 96)
    kwargs.setdefault("num_val", 4)
    return shapes.shapes_source(split=split, **kwargs)[0]


def _take(dataset, n):
    return list(dataset.take(n).as_numpy_iterator())


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_same_seed_same_bytes_other_seed_other_images():
    first = _take(_source("train", seed=5), 3)
    again = _take(_source("train", seed=5), 3)
    other = _take(_source("train", seed=6), 3)
    assert _same(first, again)
    assert not any(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))


def test_validation_split_is_fixed_and_differs_from_train():
    val = _take(_source("validation"), 10)
    assert [e["image_id"] for e in val] == [0, 1, 2, 3]  # num_val images, one pass
    assert _same(val, _take(_source("val"), 10))
    train = _take(_source("train"), 4)
    assert not any(np.array_equal(a["image"], b["image"]) for a, b in zip(val, train))
    # Drawing order does not matter: image 2 alone is image 2 of the full pass.
    parallel = _take(_source("validation", num_parallel_calls=4), 4)
    assert _same(val, parallel)


def test_example_dict_format():
    ex = _take(_source("train"), 1)[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (96, 96, 3)
    assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape[1] == 4
    assert ex["labels"].dtype == np.int32
    assert ex["is_difficult"].dtype == bool and not ex["is_difficult"].any()
    assert ex["is_crowd"].dtype == bool and not ex["is_crowd"].any()
    assert ex["image_id"] == 0 and ex["filename"] == b"shapes/train/0"
    assert ((ex["boxes"] >= 0) & (ex["boxes"] <= 1)).all()


def _color_box(image, box_px):
    """Tight pixel box (y1, x1, y2, x2) of the most frequent color inside box_px."""
    y1, x1, y2, x2 = [int(round(v)) for v in box_px]
    patch = image[y1:y2, x1:x2].reshape(-1, 3)
    colors, counts = np.unique(patch, axis=0, return_counts=True)
    color = colors[np.argmax(counts)]
    ys, xs = np.nonzero(np.all(image == color, axis=-1))
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)


@pytest.mark.parametrize("kind", shapes.KNOWN_SHAPES)
def test_box_is_the_tight_box_of_the_drawn_shape(kind):
    size = 96
    for ex in _take(
        _source("train", classes=[kind], min_objects=1, max_objects=1, image_size=size), 3
    ):
        assert ex["labels"].tolist() == [0]
        box_px = ex["boxes"][0].astype(np.float64) * size
        np.testing.assert_allclose(_color_box(ex["image"], box_px), box_px, atol=1e-4)


def test_smallest_object_is_painted_last_and_tight():
    size = 128
    checked = 0
    for ex in _take(
        _source(
            "train",
            image_size=size,
            min_objects=3,
            max_objects=4,
            classes=list(shapes.KNOWN_SHAPES),
        ),
        12,
    ):
        boxes = ex["boxes"].astype(np.float64) * size
        if len(boxes) < 2:
            continue
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        smallest = boxes[np.argmin(areas)]
        np.testing.assert_allclose(_color_box(ex["image"], smallest), smallest, atol=1e-4)
        checked += 1
    assert checked >= 8


def _iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def test_sizes_counts_overlap_and_classes():
    size, min_size, max_size, max_iou = 128, 0.15, 0.4, 0.2
    examples = _take(
        _source(
            "train",
            image_size=size,
            min_objects=2,
            max_objects=5,
            min_size=min_size,
            max_size=max_size,
            max_overlap_iou=max_iou,
            classes=["circle", "square", "triangle", "ring"],
        ),
        40,
    )
    counts = [len(e["labels"]) for e in examples]
    assert max(counts) <= 5 and np.mean(counts) >= 3.0
    labels = np.concatenate([e["labels"] for e in examples])
    assert set(labels.tolist()) == {0, 1, 2, 3}
    for ex in examples:
        boxes = ex["boxes"].astype(np.float64) * size
        sides = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
        # Tight boxes of shapes whose square side is in [min, max] * size (pixel rounding: 1 px).
        assert sides.min() >= min_size * size - 1.0 and sides.max() <= max_size * size + 1.0
        for a, b in itertools.combinations(boxes, 2):
            assert _iou(a, b) <= max_iou + 0.05


def _reference_mask(kind, dy, dx, h):
    """float64 NumPy masks written from the shapes module docstring's definitions."""
    d2 = dy**2 + dx**2
    if kind == "circle":
        return d2 <= h * h
    if kind == "square":
        return (np.abs(dy) <= h) & (np.abs(dx) <= h)
    if kind == "triangle":
        return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    if kind == "ring":
        return (d2 <= h * h) & (d2 >= (0.55 * h) ** 2)
    if kind == "cross":
        return ((np.abs(dy) <= h) & (np.abs(dx) <= 0.3 * h)) | (
            (np.abs(dx) <= h) & (np.abs(dy) <= 0.3 * h)
        )
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= h
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", shapes.KNOWN_SHAPES)
def test_shape_masks_match_reference(kind):
    cy, cx, h = 20.3, 17.8, 11.25
    dy = np.arange(40, dtype=np.float64)[:, None] + 0.5 - cy
    dx = np.arange(40, dtype=np.float64)[None, :] + 0.5 - cx
    got = shapes._shape_mask(
        kind, tf.constant(dy, tf.float32), tf.constant(dx, tf.float32), tf.constant(h, tf.float32)
    ).numpy()
    expected = _reference_mask(kind, dy, dx, h)
    # float32 vs float64 may disagree only on pixel centers lying on the boundary
    assert np.mean(got != expected) < 0.005
    rows, cols = np.nonzero(got)
    # Every shape lies inside its square [c - h, c + h] (pixel centers); the square fills it.
    first_row, last_row = int(np.ceil(cy - h - 0.5)), int(np.floor(cy + h - 0.5))
    first_col, last_col = int(np.ceil(cx - h - 0.5)), int(np.floor(cx + h - 0.5))
    assert rows.min() >= first_row and rows.max() <= last_row
    assert cols.min() >= first_col and cols.max() <= last_col
    if kind == "square":
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (
            first_row,
            last_row,
            first_col,
            last_col,
        )


def test_sharding_splits_the_stream():
    full = _take(_source("validation"), 4)
    first = _take(
        shapes.shapes_source(split="validation", image_size=96, num_val=4, shard=(2, 0))[0], 4
    )
    second = _take(
        shapes.shapes_source(split="validation", image_size=96, num_val=4, shard=(2, 1))[0], 4
    )
    assert [e["image_id"] for e in first] == [0, 2] and [e["image_id"] for e in second] == [1, 3]
    assert _same(first, [full[0], full[2]]) and _same(second, [full[1], full[3]])


def test_config_mapping_and_errors():
    cfg = data_config(
        source="shapes", shapes={"image_size": 64, "num_val": 3, "classes": ["ring", "cross"]}
    )
    dataset, info = build_source(cfg, split="validation")
    assert info.class_names == ["ring", "cross"] and info.num_examples == 3
    assert next(iter(dataset))["image"].shape == (64, 64, 3)
    _, info = build_source(cfg, split="train")
    assert info.num_examples is None  # endless
    with pytest.raises(DataError, match="unknown shapes \\['hexagon'\\]; known shapes: circle"):
        shapes.shapes_source(split="train", classes=["circle", "hexagon"])
    with pytest.raises(DataError, match="no split 'holdout'"):
        shapes.shapes_source(split="holdout")
    with pytest.raises(DataError, match="min_size <= max_size"):
        shapes.shapes_source(split="train", min_size=0.6, max_size=0.5)
    with pytest.raises(DataError, match="differ from data.shapes.classes"):
        build_source(data_config(source="shapes", class_names=["a"]), split="train")


def test_source_info_equals_the_built_sources_info_and_errors_alike(monkeypatch):
    """`source_info` (what the callers that need class names or counts use) gives the info
    `build_source` gives and fails with the same message, without building the pipeline."""
    from rfcn_tf.data import pipeline

    cfg = data_config(
        source="shapes", shapes={"image_size": 64, "num_val": 3, "classes": ["ring", "cross"]}
    )
    for split in ("train", "test"):  # (the endless and the fixed stream; a build is ~1 s)
        assert pipeline.source_info(cfg, split=split) == build_source(cfg, split=split)[1]
    bad = [
        ({"split": "holdout"}, cfg),
        ({"split": "train"}, data_config(source="shapes", class_names=["a"])),
        ({"split": "train"}, data_config(source="shapes", shapes={"classes": ["hexagon"]})),
        ({"split": "train"}, data_config(source="shapes", shapes={"min_size": 0.6})),
    ]
    for kwargs, bad_cfg in bad:
        with pytest.raises(DataError) as built:
            build_source(bad_cfg, **kwargs)
        with pytest.raises(DataError) as cheap:
            pipeline.source_info(bad_cfg, **kwargs)
        assert str(cheap.value) == str(built.value)

    def no_pipeline(*args, **kwargs):
        raise AssertionError("source_info built the shapes pipeline")

    monkeypatch.setattr(shapes, "shapes_source", no_pipeline)
    assert pipeline.source_info(cfg, split="val").num_examples == 3


def test_source_info_of_a_source_without_a_cheap_path_builds_it(tmp_path):
    from rfcn_tf.data import pipeline

    assert "voc" not in pipeline.SOURCE_INFOS
    with pytest.raises(DataError, match="VOC folder not found") as built:
        build_source(data_config(source="voc", voc_root=str(tmp_path / "none")), split="val")
    with pytest.raises(DataError) as cheap:
        pipeline.source_info(
            data_config(source="voc", voc_root=str(tmp_path / "none")), split="val"
        )
    assert str(cheap.value) == str(built.value)
    with pytest.raises(DataError, match="unknown data.source 'lmdb'"):
        pipeline.source_info(data_config(source="lmdb"), split="val")
