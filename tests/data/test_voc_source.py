"""The VOC folder source: tmp_path fixtures (good and broken) and the real BCCD folder."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tensorflow as tf
from helpers.data_fixtures import (
    VOC_IMAGES,
    data_config,
    make_voc,
    random_pixels,
    text_as_jpeg,
    truncated_jpeg,
    voc_xml,
)

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_dataset, build_source
from rfcn_tf.data.sources import voc_xml as voc

EXPECTED_NAMES = ["cat", "dog", "zebra"]  # sorted over ALL annotations, "extra" included


def _examples(dataset):
    return list(dataset.as_numpy_iterator())


def _reference_boxes(height, width, objects, names):
    """float64 NumPy reference: VOC 1-based inclusive -> continuous, normalized, clipped."""
    boxes, labels, difficult = [], [], []
    for name, xmin, ymin, xmax, ymax, diff in objects:
        if xmax <= xmin or ymax <= ymin:
            continue
        box = np.array([(ymin - 1) / height, (xmin - 1) / width, ymax / height, xmax / width])
        boxes.append(np.clip(box, 0.0, 1.0))
        labels.append(names.index(name))
        difficult.append(bool(diff))
    return np.array(boxes).reshape(-1, 4), np.array(labels, np.int32), np.array(difficult)


def test_examples_match_annotations(voc_root):
    dataset, info = voc.voc_source(voc_root, split="train")
    assert info.class_names == EXPECTED_NAMES
    assert info.num_examples == 4 and info.category_ids is None
    examples = _examples(dataset)
    assert [e["image_id"] for e in examples] == [0, 1, 2, 3]
    for ex, image_id in zip(examples, ["img_a", "img_b", "img_c", "img_d"]):
        h, w, objects = VOC_IMAGES[image_id]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (h, w, 3)
        assert ex["filename"].decode().endswith(f"JPEGImages/{image_id}.png")
        boxes, labels, difficult = _reference_boxes(h, w, objects, EXPECTED_NAMES)
        np.testing.assert_allclose(ex["boxes"], boxes, atol=1e-6)
        np.testing.assert_array_equal(ex["labels"], labels)
        np.testing.assert_array_equal(ex["is_difficult"], difficult)
        assert not ex["is_crowd"].any()
        assert ex["boxes"].dtype == np.float32 and ex["labels"].dtype == np.int32


def test_pixels_are_the_files_pixels(voc_root):
    examples = _examples(voc.voc_source(voc_root, split="val")[0])
    expected = random_pixels(50, 30, seed=1)  # img_b was written with seed 1
    np.testing.assert_array_equal(examples[0]["image"], expected)


def test_box_outside_image_is_clipped(voc_root):
    ex = _examples(voc.voc_source(voc_root, split="val")[0])[1]  # img_d (36 x 48)
    # cat (40, 30, 60, 45): continuous y [29, 45] x [39, 60] -> clipped to the 36 x 48 image
    np.testing.assert_allclose(ex["boxes"][-1], [29 / 36, 39 / 48, 1.0, 1.0], atol=1e-6)


def test_degenerate_box_dropped_with_counted_warning(voc_root, data_warnings):
    ex = _examples(voc.voc_source(voc_root, split="val")[0])[1]  # img_d has (8, 8, 8, 20)
    assert len(ex["labels"]) == 2
    messages = [m for m in data_warnings() if "xmax <= xmin" in m]
    assert len(messages) == 1
    assert "dropped 1 boxes" in messages[0] and "img_d.xml (1)" in messages[0]


def test_configured_class_order(voc_root):
    dataset, info = voc.voc_source(voc_root, split="val", class_names=["dog", "cat"])
    assert info.class_names == ["dog", "cat"]
    ex = _examples(dataset)[0]  # img_b: one cat
    np.testing.assert_array_equal(ex["labels"], [1])


def test_unknown_class_names_file_name_and_classes(voc_root):
    with pytest.raises(DataError) as err:
        voc.voc_source(voc_root, split="train", class_names=["dog"])
    message = str(err.value)
    assert "img_a.xml" in message and "'cat'" in message and "['dog']" in message


def test_image_without_boxes_is_kept(voc_root):
    ex = _examples(voc.voc_source(voc_root, split="train")[0])[2]  # img_c
    assert ex["boxes"].shape == (0, 4) and ex["labels"].shape == (0,)
    assert ex["image"].shape == (32, 32, 3)


def test_missing_split_file_names_path(voc_root):
    with pytest.raises(DataError, match=r"ImageSets/Main/trainval\.txt.*available: train, val"):
        voc.voc_source(voc_root, split="trainval")


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        voc.voc_source(tmp_path / "nowhere", split="train")
    with pytest.raises(DataError, match="nowhere"):
        voc.resolve_voc_root(str(tmp_path / "nowhere"))


def test_malformed_xml_names_file(voc_root):
    (voc_root / "Annotations" / "img_b.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"img_b\.xml: not valid XML"):
        voc.voc_source(voc_root, split="val", class_names=["cat", "dog"])


def test_non_numeric_coordinate_names_file(voc_root):
    text = voc_xml("img_b.png", 30, 50, [("cat", "left", 4, 20, 44, 0)])
    (voc_root / "Annotations" / "img_b.xml").write_text(text)
    with pytest.raises(DataError, match=r"img_b\.xml: <xmin> must be a number, got 'left'"):
        voc.voc_source(voc_root, split="val", class_names=["cat", "dog"])


@pytest.mark.parametrize("breakage", ["truncated_jpeg", "text_file"])
def test_corrupt_image_error_names_file(voc_root, breakage):
    path = voc_root / "JPEGImages" / "img_b.jpg"
    (voc_root / "JPEGImages" / "img_b.png").unlink()
    truncated_jpeg(path) if breakage == "truncated_jpeg" else text_as_jpeg(path)
    dataset, _ = voc.voc_source(voc_root, split="train")
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _examples(dataset)
    assert "DataError: cannot read or decode image file" in err.value.message
    assert str(path) in err.value.message


def test_corrupt_images_skipped_with_one_warning_per_pass(voc_root, data_warnings):
    (voc_root / "JPEGImages" / "img_b.png").unlink()
    truncated_jpeg(voc_root / "JPEGImages" / "img_b.jpg")
    (voc_root / "JPEGImages" / "img_c.png").unlink()
    text_as_jpeg(voc_root / "JPEGImages" / "img_c.jpg")
    dataset, info = voc.voc_source(voc_root, split="train", skip_corrupt=True)
    assert info.num_examples == 4
    examples = _examples(dataset.repeat(2))
    assert [e["image_id"] for e in examples] == [0, 3, 0, 3]
    skipped = [m for m in data_warnings() if "could not be read or decoded" in m]
    assert len(skipped) == 2  # one per pass
    assert "skipped 2 of 4 images" in skipped[0]
    assert "img_b.jpg" in skipped[0] and "img_c.jpg" in skipped[0]
    # img_b's one box is skipped with its image, not counted as dropped after clipping.
    assert "with their 1 boxes" in skipped[0]
    assert not [m for m in data_warnings() if "after clipping" in m]


def test_missing_image_file(voc_root, data_warnings):
    (voc_root / "JPEGImages" / "img_b.png").unlink()
    with pytest.raises(DataError, match=r"not found: .*img_b\.jpg.*skip_corrupt"):
        voc.voc_source(voc_root, split="train")
    dataset, _ = voc.voc_source(voc_root, split="train", skip_corrupt=True)
    assert [e["image_id"] for e in _examples(dataset)] == [0, 2, 3]
    assert any("skipped 1 of 4" in m for m in data_warnings())


def test_registry_and_root_resolution(voc_root, monkeypatch, tmp_path):
    cfg = data_config(source="voc", voc_root=str(voc_root))
    dataset, info = build_source(cfg, split="val")
    assert info.num_examples == 2 and len(_examples(dataset)) == 2
    monkeypatch.setenv(voc.BCCD_ENV_VAR, str(voc_root))
    assert voc.resolve_voc_root(voc.BCCD_ROOT) == voc_root
    monkeypatch.chdir(tmp_path)
    assert voc.resolve_voc_root("voc") == tmp_path / "voc"  # relative to the working directory


def test_difficult_boxes_in_eval_and_training(voc_root):
    # img_a: dog (easy) and cat (difficult). Evaluation keeps and flags it; training drops it
    # unless data.use_difficult.
    images = {"img_a": VOC_IMAGES["img_a"]}
    root = make_voc(voc_root.parent / "one", images, {"train": ["img_a"]})
    cfg = data_config(
        source="voc",
        voc_root=str(root),
        class_names=["cat", "dog"],
        scales=[40],
        max_size=1000,
        max_boxes=4,
        random_flip=False,
    )
    evaluation = next(iter(build_dataset(cfg, split="train", training=False, batch_size=1)))
    np.testing.assert_array_equal(evaluation["gt_mask"][0], [True, True, False, False])
    np.testing.assert_array_equal(evaluation["gt_difficult"][0], [False, True, False, False])
    training = next(iter(build_dataset(cfg, split="train", training=True, batch_size=1)))
    np.testing.assert_array_equal(training["gt_mask"][0], [True, False, False, False])
    np.testing.assert_array_equal(training["gt_classes"][0], [2, -1, -1, -1])
    with_difficult = dataclasses.replace(cfg, use_difficult=True)
    training = next(iter(build_dataset(with_difficult, split="train", training=True, batch_size=1)))
    np.testing.assert_array_equal(training["gt_classes"][0], [2, 1, -1, -1])


def test_drop_empty_in_training_only(voc_root):
    cfg = data_config(
        source="voc", voc_root=str(voc_root), scales=[32], max_size=64, max_boxes=4, drop_empty=True
    )
    ids = [
        int(f["image_ids"][0])
        for f in build_dataset(cfg, split="train", training=False, batch_size=1)
    ]
    assert ids == [0, 1, 2, 3]
    training = build_dataset(cfg, split="train", training=True, batch_size=1)
    ids = {int(f["image_ids"][0]) for f in training.take(24)}
    assert ids == {0, 1, 3}  # img_c (index 2) has no boxes


# ----------------------------------------------------------------------------------------------
# The real BCCD folder (never modified)


def _bccd_root():
    try:
        return voc.resolve_voc_root(voc.BCCD_ROOT)
    except DataError:
        return None


BCCD = _bccd_root()
needs_bccd = pytest.mark.skipif(
    BCCD is None, reason=f"BCCD folder not found (set ${voc.BCCD_ENV_VAR} or data.voc_root)"
)


@needs_bccd
def test_bccd_split_and_boxes_match_xml(data_warnings):
    dataset, info = voc.voc_source(BCCD, split="val")
    assert info.class_names == ["Platelets", "RBC", "WBC"]
    ids = (BCCD / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert info.num_examples == len(ids) == 87
    examples = _examples(dataset)
    assert len(examples) == 87
    # Check every image against an independent parse of its XML.
    for ex, image_id in zip(examples, ids):
        root = ET.parse(BCCD / "Annotations" / f"{image_id}.xml").getroot()
        objects = [
            (
                o.find("name").text.strip(),
                *[float(o.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")],
                int(o.find("difficult").text),
            )
            for o in root.findall("object")
        ]
        h, w = ex["image"].shape[:2]
        boxes, labels, _ = _reference_boxes(h, w, objects, info.class_names)
        np.testing.assert_allclose(ex["boxes"], boxes, atol=1e-6)
        np.testing.assert_array_equal(ex["labels"], labels)
    # BloodImage_00338 (in val) has one box with xmin == xmax.
    assert any("BloodImage_00338.xml (1)" in m for m in data_warnings())
