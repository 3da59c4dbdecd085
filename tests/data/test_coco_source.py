"""The COCO JSON source on generated instances files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers.data_fixtures import data_config, make_coco, random_pixels, truncated_jpeg

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_source
from rfcn_tf.data.sources import coco_json

# Non-contiguous category ids, listed out of order: labels follow ascending ids.
CATEGORIES = [(7, "kite"), (1, "person"), (3, "car")]
IMAGES = [(42, "b.png", 40, 50), (5, "a.png", 30, 60), (9, "empty.png", 20, 20)]
ANNOTATIONS = [
    {"image_id": 5, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 10.0], "iscrowd": 0},
    {"image_id": 5, "category_id": 7, "bbox": [50.0, 20.0, 30.0, 30.0], "iscrowd": 1},
    {"image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 40.0], "iscrowd": 0},
    {"image_id": 42, "category_id": 1, "bbox": [3.0, 3.0, 0.0, 9.0], "iscrowd": 0},
]


@pytest.fixture
def coco(tmp_path):
    return make_coco(
        tmp_path / "coco", images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES
    )


def _examples(dataset):
    return list(dataset.as_numpy_iterator())


def test_labels_category_ids_and_boxes(coco, data_warnings):
    annotations, images = coco
    dataset, info = coco_json.coco_source(annotations, images, split="train")
    assert info.class_names == ["person", "car", "kite"]
    assert info.category_ids == [1, 3, 7]
    assert info.num_examples == 3
    examples = _examples(dataset)
    assert [e["image_id"] for e in examples] == [5, 9, 42]  # ordered by id
    a, empty, b = examples
    assert a["image"].shape == (30, 60, 3)
    np.testing.assert_array_equal(a["image"], random_pixels(30, 60, seed=101))
    # float64 reference: xywh -> yxyx / (h, w), clipped to [0, 1]
    np.testing.assert_allclose(
        a["boxes"], [[5 / 30, 10 / 60, 15 / 30, 30 / 60], [20 / 30, 50 / 60, 1.0, 1.0]], atol=1e-6
    )
    np.testing.assert_array_equal(a["labels"], [1, 2])
    np.testing.assert_array_equal(a["is_crowd"], [False, True])
    assert not a["is_difficult"].any()
    assert a["filename"].decode().endswith("train/a.png")
    # The image without annotations is a negative example.
    assert empty["boxes"].shape == (0, 4) and empty["image"].shape == (20, 20, 3)
    # The zero-width box of image 42 is dropped, with a warning naming the file.
    np.testing.assert_allclose(b["boxes"], [[0.0, 0.0, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(b["labels"], [0])
    assert any("width <= 0 or height <= 0: b.png (1)" in m for m in data_warnings())


def test_labels_map_back_to_category_ids(coco):
    dataset, info = coco_json.coco_source(*coco, split="train")
    labels = np.concatenate([e["labels"] for e in _examples(dataset)])
    assert sorted(info.category_ids[label] for label in labels) == [1, 3, 7]


def test_configured_classes_reorder_and_reject(coco):
    dataset, info = coco_json.coco_source(
        *coco, split="train", class_names=["kite", "car", "person"]
    )
    assert info.category_ids == [7, 3, 1]
    np.testing.assert_array_equal(_examples(dataset)[0]["labels"], [1, 0])
    with pytest.raises(DataError) as err:
        coco_json.coco_source(*coco, split="train", class_names=["car", "person"])
    assert "'kite'" in str(err.value) and "a.png" in str(err.value)
    with pytest.raises(DataError, match=r"configured classes \['boat'\] are not categories"):
        coco_json.coco_source(*coco, split="train", class_names=["boat"])


def test_split_placeholder_and_registry(coco):
    annotations, images = coco
    cfg = data_config(source="coco_json", coco_annotations=annotations, coco_images=images)
    _, info = build_source(cfg, split="train")
    assert info.num_examples == 3
    with pytest.raises(DataError, match=r"instances_val\.json"):
        build_source(cfg, split="val")
    with pytest.raises(DataError, match="coco_annotations"):
        build_source(data_config(source="coco_json"), split="train")


def test_bad_files(tmp_path, coco):
    annotations, images = coco
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        coco_json.coco_source(str(path), images, split="train")
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="'categories' list is missing"):
        coco_json.coco_source(str(path), images, split="train")
    data = json.loads(Path(annotations.replace("{split}", "train")).read_text())
    data["annotations"].append({"id": 99, "image_id": 1234, "category_id": 1, "bbox": [0, 0, 1, 1]})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="refers to image_id 1234"):
        coco_json.coco_source(str(path), images, split="train")


def test_corrupt_image(coco, tmp_path, data_warnings):
    annotations, images = coco
    folder = tmp_path / "coco" / "train"
    (folder / "a.png").unlink()
    truncated_jpeg(folder / "a.png")  # a truncated JPEG behind a .png name
    dataset, _ = coco_json.coco_source(annotations, images, split="train")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a\.png"):
        _examples(dataset)
    dataset, _ = coco_json.coco_source(annotations, images, split="train", skip_corrupt=True)
    assert [e["image_id"] for e in _examples(dataset)] == [9, 42]
    assert any("skipped 1 of 3 images" in m and "a.png" in m for m in data_warnings())
    (folder / "b.png").unlink()
    with pytest.raises(DataError, match=r"not found: .*b\.png"):
        coco_json.coco_source(annotations, images, split="train")


def test_duplicate_and_malformed_image_ids(coco, tmp_path):
    annotations, images = coco
    data = json.loads(Path(annotations.replace("{split}", "train")).read_text())
    path = tmp_path / "dup.json"
    duplicate = dict(data, images=data["images"] + [{"id": 5, "file_name": "b.png"}])
    path.write_text(json.dumps(duplicate))
    # Merging would give image 5 the boxes of both files: refused, naming the id and both files.
    with pytest.raises(DataError, match=r"image id 5 is used twice, by 'a\.png' and 'b\.png'"):
        coco_json.coco_source(str(path), images, split="train")
    no_id = dict(data, images=data["images"] + [{"file_name": "c.png"}])
    path.write_text(json.dumps(no_id))
    with pytest.raises(DataError, match=r"images\[3\] needs an integer 'id'.*c\.png"):
        coco_json.coco_source(str(path), images, split="train")
