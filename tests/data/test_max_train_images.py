"""data.max_train_images: the first N ids of the training split, sorted by id (issue 16.5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers.data_fixtures import data_config, make_coco, make_voc

from rfcn_tf.config import ConfigError, load_config
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_source
from rfcn_tf.data.sources import voc_xml as voc


def _filenames(dataset) -> list[str]:
    return [Path(ex["filename"].decode()).stem for ex in dataset.as_numpy_iterator()]


def test_voc_first_n_ids_sorted_and_only_the_training_split(tmp_path):
    # The split file is NOT sorted: the subset is by id, not by line order.
    root = make_voc(
        tmp_path / "voc",
        splits={"train": ["img_d", "img_b", "img_a", "img_c"], "val": ["img_d", "img_b"]},
    )
    cfg = data_config(
        source="voc",
        voc_root=str(root),
        class_names=["cat", "dog"],
        train_split="train",
        val_split="val",
        max_train_images=2,
    )
    dataset, info = build_source(cfg, split="train")
    assert info.num_examples == 2
    assert _filenames(dataset) == ["img_a", "img_b"]
    # Other splits keep every image, in the split file's order.
    dataset, info = build_source(cfg, split="val")
    assert info.num_examples == 2 and _filenames(dataset) == ["img_d", "img_b"]
    # More than the split has: the whole split (sorted).
    dataset, info = build_source(dataclasses.replace(cfg, max_train_images=10), split="train")
    assert info.num_examples == 4 and _filenames(dataset) == ["img_a", "img_b", "img_c", "img_d"]


def test_coco_first_n_image_ids(tmp_path):
    images = [(42, "b.png", 40, 50), (5, "a.png", 30, 60), (9, "c.png", 20, 20)]
    annotations = [
        {"image_id": i, "category_id": 1, "bbox": [1.0, 1.0, 10.0, 8.0], "iscrowd": 0}
        for i in (5, 9, 42)
    ]
    json_path, image_dir = make_coco(
        tmp_path / "coco", images=images, annotations=annotations, categories=[(1, "person")]
    )
    cfg = data_config(
        source="coco_json",
        coco_annotations=json_path,
        coco_images=image_dir,
        train_split="train",
        max_train_images=2,
    )
    dataset, info = build_source(cfg, split="train")
    assert info.num_examples == 2
    assert [int(ex["image_id"]) for ex in dataset.as_numpy_iterator()] == [5, 9]


@pytest.mark.parametrize("source", ["tfds", "tfrecord", "shapes"])
def test_sources_without_ids_refuse_it(source):
    with pytest.raises(
        ConfigError,
        match=rf"data.max_train_images must be null for "
        rf"data.source='{source}'.*voc, coco_json",
    ):
        load_config("shapes_tiny", [f"data.source={source}", "data.max_train_images=35"])
    with pytest.raises(ConfigError, match=r"data.max_train_images must be >= 1"):
        load_config("bccd", ["data.max_train_images=0"])


def _bccd():
    try:
        return voc.resolve_voc_root(voc.BCCD_ROOT)
    except DataError:
        return None


@pytest.mark.skipif(_bccd() is None, reason="BCCD folder not found (../shared/data/BCCD)")
def test_bccd35_preset_and_its_epochs():
    from rfcn_tf.engine.features import resolve_schedule

    cfg = load_config("bccd35")
    assert cfg.data.train_split == "train" and cfg.data.max_train_images == 35
    dataset, info = build_source(cfg.data, split="train")
    ids = sorted((_bccd() / "ImageSets" / "Main" / "train.txt").read_text().split())[:35]
    assert info.num_examples == 35 and ids[-1] == "BloodImage_00069"
    assert _filenames(dataset) == ids
    # Epochs count the subset: 35 images at batch 2 = 17.5 steps per epoch.
    resolved = resolve_schedule(load_config("bccd35", ["train.epochs=10", "train.warmup_epochs=1"]))
    assert resolved.train.steps == 175 and resolved.train.warmup_steps == 18
