"""build_dataset: the batched features of docs/INTERFACES.md, training vs evaluation, sharding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from helpers.data_fixtures import data_config

from rfcn_tf.config import load_config
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import (
    FEATURE_KEYS,
    build_dataset,
    build_source,
    evaluation_scale,
    steps_per_epoch,
)

DTYPES = {
    "images": tf.uint8,
    "image_shapes": tf.int32,
    "original_shapes": tf.int32,
    "image_ids": tf.int64,
    "gt_boxes": tf.float32,
    "gt_classes": tf.int32,
    "gt_mask": tf.bool,
    "gt_difficult": tf.bool,
    "gt_is_crowd": tf.bool,
}


def _shapes_cfg(**fields):
    shapes = {"image_size": 96, "num_val": 6, "max_objects": 3}
    shapes.update(fields.pop("shapes", {}))
    fields.setdefault("scales", [96])
    fields.setdefault("max_size", 96)
    fields.setdefault("max_boxes", 5)
    return data_config(source="shapes", shapes=shapes, **fields)


def _batches(dataset, n=None):
    return list((dataset if n is None else dataset.take(n)).as_numpy_iterator())


def test_default_config_features_match_interfaces():
    cfg = load_config("shapes_tiny").data
    dataset = build_dataset(cfg, split=cfg.train_split, training=True, batch_size=4)
    spec = dataset.element_spec
    assert tuple(spec) == FEATURE_KEYS
    for key, dtype in DTYPES.items():
        assert spec[key].dtype == dtype, key
    g = cfg.max_boxes
    images_shape = spec["images"].shape.as_list()
    assert images_shape[0] == 4 and images_shape[3] == 3 and len(images_shape) == 4
    assert spec["gt_boxes"].shape.as_list() == [4, g, 4]
    for key in ("gt_classes", "gt_mask", "gt_difficult", "gt_is_crowd"):
        assert spec[key].shape.as_list() == [4, g]
    features = _batches(dataset, 1)[0]
    assert features["images"].shape == (4, 256, 256, 3)
    np.testing.assert_array_equal(features["image_shapes"], [[256, 256]] * 4)


def test_eval_features_are_the_source_examples_resized():
    cfg = _shapes_cfg(scales=[128], max_size=1000)
    examples = _batches(build_source(cfg, split="validation")[0])
    batches = _batches(build_dataset(cfg, split="validation", training=False, batch_size=4))
    assert [len(b["image_ids"]) for b in batches] == [4, 2]  # one pass, last batch partial
    features = {k: np.concatenate([b[k] for b in batches]) for k in FEATURE_KEYS}
    np.testing.assert_array_equal(features["image_ids"], [e["image_id"] for e in examples])
    for i, ex in enumerate(examples):
        n = len(ex["labels"])
        np.testing.assert_array_equal(features["original_shapes"][i], [96, 96])
        np.testing.assert_array_equal(features["image_shapes"][i], [128, 128])
        mask = features["gt_mask"][i]
        np.testing.assert_array_equal(mask, np.arange(5) < n)
        np.testing.assert_array_equal(features["gt_classes"][i][:n], ex["labels"] + 1)
        np.testing.assert_allclose(
            features["gt_boxes"][i][:n], ex["boxes"].astype(np.float64) * 128, atol=1e-4
        )
        # padding rows: -1 everywhere, False flags
        assert (features["gt_boxes"][i][n:] == -1).all()
        assert (features["gt_classes"][i][n:] == -1).all()
        assert not features["gt_difficult"][i].any() and not features["gt_is_crowd"][i].any()
        expected, _ = tf.image.resize(ex["image"], [128, 128]), None
        expected = tf.saturate_cast(tf.round(expected), tf.uint8).numpy()
        np.testing.assert_array_equal(features["images"][i], expected)


def test_padding_to_batch_max_and_multiple_of_16(voc_root):
    # VOC fixture images: 40x60, 50x30, 32x32, 36x48; scale 1 (min_size = shorter side is not
    # possible for all, so use a large max_size and min_size 40 -> sizes differ per image)
    cfg = data_config(source="voc", voc_root=str(voc_root), scales=[40], max_size=1000, max_boxes=4)
    batches = _batches(build_dataset(cfg, split="train", training=False, batch_size=3))
    assert [len(b["image_ids"]) for b in batches] == [3, 1]
    first = batches[0]
    shapes = first["image_shapes"]
    np.testing.assert_array_equal(shapes, [[40, 60], [67, 40], [40, 40]])
    np.testing.assert_array_equal(first["original_shapes"], [[40, 60], [50, 30], [32, 32]])
    assert first["images"].shape == (3, 80, 64, 3)  # max (67, 60) rounded up to 16
    for image, (h, w) in zip(first["images"], shapes):
        assert image[:h, :w].any()
        assert not image[h:].any() and not image[:, w:].any()  # zero padding bottom/right
    last = batches[1]
    assert last["images"].shape[1] % 16 == 0 and last["images"].shape[2] % 16 == 0


def test_training_repeats_with_full_batches_and_multiscale(voc_root):
    cfg = data_config(
        source="voc", voc_root=str(voc_root), scales=[32, 48, 64], max_size=1000, max_boxes=4
    )
    dataset = build_dataset(cfg, split="train", training=True, batch_size=2)
    assert dataset.element_spec["images"].shape[0] == 2  # static batch (drop_remainder)
    batches = _batches(dataset, 12)  # 24 images from a 4-image split
    ids = np.concatenate([b["image_ids"] for b in batches])
    assert sorted(set(ids.tolist())) == [0, 1, 2, 3]
    shorter = np.concatenate([b["image_shapes"].min(axis=1) for b in batches])
    assert set(shorter.tolist()) == {32, 48, 64}


def test_deterministic_mode_same_bytes(voc_root):
    cfg = data_config(
        source="voc",
        voc_root=str(voc_root),
        scales=[32, 48],
        max_size=1000,
        max_boxes=4,
        random_flip=True,
        photometric=True,
        seed=3,
    )
    first = _batches(build_dataset(cfg, split="train", training=True, batch_size=2), 4)
    again = _batches(build_dataset(cfg, split="train", training=True, batch_size=2), 4)
    for a, b in zip(first, again):
        for key in FEATURE_KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    other = _batches(
        build_dataset(dataclasses.replace(cfg, seed=4), split="train", training=True, batch_size=2),
        4,
    )
    assert any(not np.array_equal(a["images"], b["images"]) for a, b in zip(first, other))


def test_training_flip_keeps_boxes_on_pixels():
    # One object per image, no resizing: every box must be the tight box of its shape's color.
    cfg = _shapes_cfg(shapes={"min_objects": 1, "max_objects": 1}, random_flip=True)
    flipped_seen = set()
    for features in _batches(build_dataset(cfg, split="train", training=True, batch_size=4), 2):
        for image, box in zip(features["images"], features["gt_boxes"][:, 0]):
            y1, x1, y2, x2 = [int(round(v)) for v in box]
            patch = image[y1:y2, x1:x2].reshape(-1, 3)
            colors, counts = np.unique(patch, axis=0, return_counts=True)
            ys, xs = np.nonzero(np.all(image == colors[np.argmax(counts)], axis=-1))
            np.testing.assert_allclose(
                [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], box, atol=1e-3
            )
            flipped_seen.add(x1)
    assert len(flipped_seen) > 1


def test_per_worker_sharding_and_per_replica_batch(voc_root):
    cfg = data_config(source="voc", voc_root=str(voc_root), scales=[32], max_size=64, max_boxes=4)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        batches = _batches(
            build_dataset(cfg, split="train", training=False, batch_size=2, input_context=context)
        )
        assert all(len(b["image_ids"]) == 1 for b in batches)  # global 2 over 2 replicas
        seen.append([int(i) for b in batches for i in b["image_ids"]])
    assert seen == [[0, 2], [1, 3]]
    # Training: each worker draws its own share of the endless shapes stream.
    shapes_cfg = _shapes_cfg()
    ids = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        batch = _batches(
            build_dataset(
                shapes_cfg, split="train", training=True, batch_size=4, input_context=context
            ),
            1,
        )[0]
        assert batch["images"].shape[0] == 2
        ids.append(batch["image_ids"].tolist())
    assert ids == [[0, 2], [1, 3]]


def test_cache_option(voc_root, data_warnings):
    cfg = data_config(
        source="voc",
        voc_root=str(voc_root),
        scales=[32],
        max_size=64,
        max_boxes=4,
        cache=True,
        shuffle_buffer=8,
    )
    batches = _batches(build_dataset(cfg, split="train", training=True, batch_size=2), 6)
    ids = np.concatenate([b["image_ids"] for b in batches])
    assert sorted(set(ids.tolist())) == [0, 1, 2, 3]
    evaluation = _batches(build_dataset(cfg, split="train", training=False, batch_size=4))
    np.testing.assert_array_equal(evaluation[0]["image_ids"], [0, 1, 2, 3])
    _batches(build_dataset(_shapes_cfg(cache=True), split="train", training=True, batch_size=2), 1)
    assert any("data.cache ignored" in m for m in data_warnings())


def test_evaluation_scale_and_steps():
    assert evaluation_scale([400, 500, 600, 700, 800]) == 600
    assert evaluation_scale([600]) == 600
    assert evaluation_scale([576, 480]) == 480
    cfg = _shapes_cfg()
    _, info = build_source(cfg, split="validation")
    assert steps_per_epoch(info, 4) == 2
    assert steps_per_epoch(build_source(cfg, split="train")[1], 4) is None


def test_argument_errors():
    cfg = _shapes_cfg()
    with pytest.raises(DataError, match="batch_size must be >= 1, got 0"):
        build_dataset(cfg, split="train", training=True, batch_size=0)
    with pytest.raises(DataError, match="unknown data.source 'lmdb'"):
        build_source(dataclasses.replace(cfg, source="lmdb"), split="train")
    with pytest.raises(DataError, match="shard index must be in"):
        build_source(cfg, split="train", shard=(2, 2))


def test_evaluation_pass_keeps_split_order_even_when_training_may_not():
    # data.deterministic off (the library default): training may reorder for throughput, an
    # evaluation pass must not, or "the first N images" of evaluate --max-images would change
    # from run to run.
    cfg = dataclasses.replace(_shapes_cfg(num_parallel_calls=4), deterministic=False)
    evaluation = build_dataset(cfg, split="val", training=False, batch_size=2)
    training = build_dataset(cfg, split="train", training=True, batch_size=2)
    assert evaluation.options().deterministic is True
    assert training.options().deterministic is False
    source, _ = build_source(cfg, split="val")
    source_ids = [int(ex["image_id"]) for ex in source.as_numpy_iterator()]
    for _ in range(2):
        ids = np.concatenate([b["image_ids"] for b in evaluation.as_numpy_iterator()])
        assert ids.tolist() == source_ids
