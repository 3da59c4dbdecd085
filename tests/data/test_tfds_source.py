"""The TFDS source on mocked voc/2007, voc/2012 and coco/2017 (nothing is downloaded).

`tfds.testing.mock_data`'s random generator cannot build `objects` sequences of equal lengths,
so the mock serves hand-made examples through `as_dataset_fn`, encoded and decoded by the real
TFDS features (so `decoders=SkipDecoding` behaves as with prepared data).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers.data_fixtures import data_config, random_pixels
from helpers.tfds_fakes import NUM, _bbox, _fake_as_dataset

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_source
from rfcn_tf.data.sources import tfds as tfds_src


@pytest.fixture
def mocked():
    with tfds.testing.mock_data(
        as_dataset_fn=_fake_as_dataset(), policy=tfds.testing.MockPolicy.USE_CODE
    ):
        yield


def _examples(dataset):
    return list(dataset.as_numpy_iterator())


def test_voc_mapping(mocked):
    dataset, info = tfds_src.tfds_source("voc/2007", split="train")
    assert info.class_names[:3] == ["aeroplane", "bicycle", "bird"] and info.num_classes == 20
    assert info.num_examples == NUM
    examples = _examples(dataset)
    for i, ex in enumerate(examples):
        n = i + 1
        np.testing.assert_array_equal(ex["image"], random_pixels(20 + i, 30, seed=i))
        np.testing.assert_allclose(ex["boxes"], _bbox(i))
        np.testing.assert_array_equal(ex["labels"], np.arange(n) + i)
        assert ex["labels"].dtype == np.int32
        np.testing.assert_array_equal(ex["is_difficult"], np.arange(n) == 0)
        assert not ex["is_crowd"].any()  # VOC has no is_crowd
        assert ex["filename"] == f"2007_{i:06d}.jpg".encode()
        assert ex["image_id"] == 2007_000000 + i  # digits of the file name


def test_coco_mapping(mocked):
    dataset, info = tfds_src.tfds_source("coco/2017", split="validation")
    examples = _examples(dataset)
    assert [e["image_id"] for e in examples] == [1000, 1001, 1002]  # image/id
    last = examples[-1]
    np.testing.assert_array_equal(last["is_crowd"], [False, False, True])
    assert not last["is_difficult"].any()
    assert info.category_ids is None


@pytest.mark.parametrize("names", ["voc/2007+voc/2012", ["voc/2007", "voc/2012"]])
def test_concatenation(mocked, names):
    dataset, info = tfds_src.tfds_source(names, split="train")
    assert info.num_examples == 2 * NUM
    files = [e["filename"].decode() for e in _examples(dataset)]
    assert files[:NUM] == [f"2007_{i:06d}.jpg" for i in range(NUM)]
    assert files[NUM:] == [f"2012_{i:06d}.jpg" for i in range(NUM)]


def test_concatenating_different_classes_fails(mocked):
    with pytest.raises(DataError, match="different classes"):
        tfds_src.tfds_source("voc/2007+coco/2017", split="train")


def test_registry_class_names_and_errors(mocked):
    cfg = data_config(source="tfds", tfds_name="voc/2007", class_names=[f"c{i}" for i in range(20)])
    _, info = build_source(cfg, split="train")
    assert info.class_names[0] == "c0"
    with pytest.raises(DataError, match="has 2 names but TFDS voc/2007 has 20 classes"):
        build_source(
            data_config(source="tfds", tfds_name="voc/2007", class_names=["a", "b"]), split="train"
        )
    with pytest.raises(DataError, match="not a detection dataset"):
        tfds_src.tfds_source("mnist", split="train")
    with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        tfds_src.tfds_source("no_such_dataset_xyz", split="train")
    with pytest.raises(DataError, match="got 'voc/2007\\+'"):
        tfds_src.tfds_source("voc/2007+", split="train")


def test_corrupt_image_in_records(data_warnings):
    with tfds.testing.mock_data(
        as_dataset_fn=_fake_as_dataset(corrupt_index=1), policy=tfds.testing.MockPolicy.USE_CODE
    ):
        dataset, _ = tfds_src.tfds_source("voc/2007", split="train")
        with pytest.raises(tf.errors.InvalidArgumentError, match="2007_000001.jpg"):
            _examples(dataset)
        dataset, _ = tfds_src.tfds_source("voc/2007", split="train", skip_corrupt=True)
        assert [e["filename"] for e in _examples(dataset)] == [
            b"2007_000000.jpg",
            b"2007_000002.jpg",
        ]
    assert any("skipped 1 of 3 images" in m for m in data_warnings())


def test_shard_and_shuffle(mocked):
    first, _ = tfds_src.tfds_source("voc/2007", split="train", shard=(2, 0))
    second, _ = tfds_src.tfds_source("voc/2007", split="train", shard=(2, 1))
    assert [e["image_id"] for e in _examples(first)] == [2007_000000, 2007_000002]
    assert [e["image_id"] for e in _examples(second)] == [2007_000001]
    shuffled, _ = tfds_src.tfds_source("voc/2007", split="train", shuffle=True, seed=3)
    assert sorted(e["image_id"] for e in _examples(shuffled)) == [
        2007_000000 + i for i in range(NUM)
    ]


def test_data_dir_and_manual_dir_are_passed(mocked, monkeypatch):
    calls = {}
    real_builder = tfds.builder

    def recording_builder(name, **kwargs):
        calls["data_dir"] = kwargs.get("data_dir")
        builder = real_builder(name, **kwargs)

        def download_and_prepare(download_config=None, **_):
            calls["manual_dir"] = download_config.manual_dir

        monkeypatch.setattr(builder, "download_and_prepare", download_and_prepare)
        return builder

    monkeypatch.setattr(tfds, "builder", recording_builder)
    cfg = data_config(
        source="tfds", tfds_name="voc/2007", data_dir="/data/tfds", manual_dir="/data/manual"
    )
    build_source(cfg, split="train")
    assert calls["data_dir"] == "/data/tfds"
    assert str(calls["manual_dir"]) == "/data/manual"


def test_eval_tfds_name_serves_every_split_but_training(mocked):
    """The paper's VOC recipe: train on voc/2007+voc/2012 trainval, evaluate on voc/2007 test."""
    cfg = data_config(
        source="tfds",
        tfds_name="voc/2007+voc/2012",
        eval_tfds_name="voc/2007",
        train_split="trainval",
        val_split="test",
    )
    train, train_info = build_source(cfg, split="trainval")
    test, test_info = build_source(cfg, split="test")
    assert train_info.num_examples == 2 * NUM and test_info.num_examples == NUM
    assert {e["filename"].decode()[:4] for e in _examples(train)} == {"2007", "2012"}
    assert {e["filename"].decode()[:4] for e in _examples(test)} == {"2007"}
