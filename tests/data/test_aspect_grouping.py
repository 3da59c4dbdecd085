"""Aspect-ratio grouping: training batches hold images of one height/width group."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers.data_fixtures import data_config, make_voc

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import aspect_group, build_dataset

# 3 landscape (h < w) and 3 portrait images, interleaved so plain batching mixes them.
IMAGES = {
    f"img_{i}": ((30, 50) if i % 2 == 0 else (50, 30)) + ([("cat", 2, 2, 20, 20, 0)],)
    for i in range(6)
}


@pytest.mark.parametrize(
    "hw, boundaries, group",
    [
        ((30, 50), [1.0], 0),
        ((50, 30), [1.0], 1),
        ((40, 40), [1.0], 1),
        ((10, 40), [0.5, 2.0], 0),
        ((40, 40), [0.5, 2.0], 1),
        ((90, 40), [0.5, 2.0], 2),
        ((40, 40), [2.0, 0.5], 1),  # boundaries are sorted
    ],
)
def test_aspect_group(hw, boundaries, group):
    assert int(aspect_group(tf.constant(hw, tf.int32), boundaries)) == group


def _batches(tmp_path, **fields):
    root = make_voc(tmp_path / "voc", images=IMAGES, splits={"train": list(IMAGES)})
    cfg = data_config(
        source="voc",
        voc_root=str(root),
        scales=[30],
        max_size=64,
        random_flip=False,
        max_boxes=2,
        **fields,
    )
    dataset = build_dataset(cfg, split="train", training=True, batch_size=2)
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(9)]


def _mixed(batch) -> bool:
    portrait = batch["image_shapes"][:, 0] >= batch["image_shapes"][:, 1]
    return bool(portrait.any() and not portrait.all())


def test_batches_of_two_group_by_default_and_pad_less(tmp_path):
    grouped = _batches(tmp_path)
    assert not any(_mixed(b) for b in grouped)
    for b in grouped:
        # The padded size is the group's own shape (rounded up to 16): 30x50 -> 32x64.
        assert b["images"].shape[1:3] in ((32, 64), (64, 32))
        np.testing.assert_array_equal(b["gt_mask"].sum(axis=1), [1, 1])
    ids = {int(i) for b in grouped for i in b["image_ids"]}
    assert ids == set(range(6))  # both groups are drawn


def test_grouping_off_mixes_orientations(tmp_path):
    plain = _batches(tmp_path, aspect_grouping=False)
    assert any(_mixed(b) for b in plain)
    assert any(b["images"].shape[1:3] == (64, 64) for b in plain)


def test_bad_boundaries(tmp_path):
    with pytest.raises(DataError, match=r"data.aspect_ratio_boundaries must be positive"):
        _batches(tmp_path, aspect_ratio_boundaries=[0.0])
