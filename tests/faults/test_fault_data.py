"""Data faults through the public data API (`build_source`, `build_dataset`) and the engine's
`run_training`: unreadable image files, bad boxes and annotations, odd pixel formats, COCO ids.

Every error names the culprit file (and the value); skipped images are counted with their boxes;
inputs are never modified.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from fault_helpers import CLASSES, grid_boxes, make_voc, small_voc, snapshot, tiny_overrides
from PIL import Image

from rfcn_tf.config import load_config
from rfcn_tf.data.errors import DataError, data_error_from
from rfcn_tf.data.pipeline import build_dataset, build_source


def _cfg(voc, tmp_path, **extra):
    return load_config("shapes_tiny", tiny_overrides(voc, tmp_path / "run", **extra)).data


def _examples(cfg, split="train"):
    dataset, _ = build_source(cfg, split=split)
    return list(dataset.as_numpy_iterator())


def _truncated_png(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BREAKAGES = {
    "truncated": _truncated_png,
    "zero_byte": lambda path: path.write_bytes(b""),
    "not_an_image": lambda path: path.write_text("this is a text file\n"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_unreadable_image_is_one_line_naming_the_file(tmp_path, breakage):
    voc = small_voc(tmp_path / "voc")
    bad = voc / "JPEGImages" / "im2.png"
    BREAKAGES[breakage](bad)
    before = snapshot(voc)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _examples(_cfg(voc, tmp_path))
    error = data_error_from(err.value)
    assert isinstance(error, DataError)
    assert "\n" not in str(error)
    assert str(error).startswith(f"cannot read or decode image file {bad} of voc ")
    assert "data.skip_corrupt=true" in str(error)
    assert snapshot(voc) == before


def test_skip_corrupt_counts_images_with_their_boxes(tmp_path, caplog):
    voc = small_voc(tmp_path / "voc")  # im1 has 2 boxes, im2 has 3
    BREAKAGES["truncated"](voc / "JPEGImages" / "im1.png")
    BREAKAGES["zero_byte"](voc / "JPEGImages" / "im2.png")
    caplog.set_level(logging.WARNING, logger="rfcn_tf.data")
    examples = _examples(_cfg(voc, tmp_path, data__skip_corrupt="true"))
    assert [e["image_id"] for e in examples] == [0, 3]
    messages = [r.getMessage() for r in caplog.records if r.name == "rfcn_tf.data"]
    skipped = [m for m in messages if "skipped" in m]
    assert len(skipped) == 1
    assert "skipped 2 of 4 images" in skipped[0] and "with their 5 boxes" in skipped[0]
    assert "im1.png" in skipped[0] and "im2.png" in skipped[0]
    assert not [m for m in messages if "after clipping" in m]


def test_unreadable_image_during_training_is_one_data_error(tmp_path):
    """Issue 12 item 8: training on a split with a corrupt image stops with ONE line naming the
    file (a DataError), not TensorFlow's many-line graph error."""
    from helpers.engine_standin import TinyDetector

    from rfcn_tf.engine.checkpoints import verify_checkpoint
    from rfcn_tf.engine.optimizer import build_optimizer
    from rfcn_tf.engine.schemes import build_stages, run_training

    voc = small_voc(tmp_path / "voc")
    bad = voc / "JPEGImages" / "im1.png"
    BREAKAGES["not_an_image"](bad)
    cfg = _cfg(voc, tmp_path)
    with pytest.raises(DataError) as err:
        run_training(
            model=TinyDetector(),
            strategy=tf.distribute.get_strategy(),
            dataset_fn=lambda ctx: build_dataset(
                cfg, split="train", training=True, batch_size=1, input_context=ctx
            ).map(
                # the stand-in needs a static image size: every image here is 48 x 48
                lambda f: dict(f, images=tf.ensure_shape(f["images"], [1, 48, 48, 3]))
            ),
            stages=build_stages("joint", steps=4),
            optimizer_fn=lambda variables, n: build_optimizer(
                variables=variables, learning_rate=0.01
            ),
            checkpoint_dir=str(tmp_path / "run" / "checkpoints"),
            num_classes=2,
            global_batch_size=1,
            checkpoint_every=1,
            data_resume="none",
        )
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot read or decode image file {bad}")
    # The steps trained before the bad image came up (shuffled) were checkpointed intact.
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    if latest is not None:
        verify_checkpoint(latest)


def test_degenerate_and_outside_boxes(tmp_path, caplog):
    images = {
        "im0": (
            40,
            50,
            [
                ("cell", 10, 10, 10, 30),  # zero width: dropped
                ("cell", 20, 5, 8, 30),  # xmax < xmin: dropped
                ("dot", -20, -5, 30, 100),
            ],
        )
    }  # reaches outside: clipped
    voc = make_voc(tmp_path / "voc", images, {"train": ["im0"], "val": ["im0"]})
    caplog.set_level(logging.WARNING, logger="rfcn_tf.data")
    (example,) = _examples(_cfg(voc, tmp_path))
    np.testing.assert_allclose(example["boxes"], [[0.0, 0.0, 1.0, 30 / 50]], atol=1e-6)
    np.testing.assert_array_equal(example["labels"], [1])
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 2 boxes with xmax <= xmin or ymax <= ymin: im0.xml (2)" in warning


def test_unknown_class_names_file_and_class(tmp_path):
    images = {"im0": (32, 32, [("zebra", 2, 2, 20, 20)])}
    voc = make_voc(tmp_path / "voc", images, {"train": ["im0"], "val": ["im0"]})
    with pytest.raises(
        DataError,
        match=r"im0\.xml: class name 'zebra' is not one of the "
        r"configured classes \['cell', 'dot'\]",
    ):
        _examples(_cfg(voc, tmp_path))


def test_malformed_xml_names_the_file(tmp_path):
    voc = small_voc(tmp_path / "voc")
    (voc / "Annotations" / "im3.xml").write_text("<annotation><object><name>cell</name>")
    with pytest.raises(DataError, match=r"im3\.xml"):
        _examples(_cfg(voc, tmp_path))


def test_missing_split_names_the_split_file(tmp_path):
    voc = small_voc(tmp_path / "voc")
    with pytest.raises(DataError, match=r"test\.txt"):
        build_source(_cfg(voc, tmp_path), split="test")


def _write(path, array, mode=None, **save):
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **save)


def test_grayscale_cmyk_and_16_bit_images_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    deep = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    images = {
        "gray": (32, 32, grid_boxes(1, size=32, cell=16)),
        "cmyk": (32, 32, grid_boxes(1, size=32, cell=16)),
        "deep": (32, 32, grid_boxes(1, size=32, cell=16)),
    }
    voc = make_voc(tmp_path / "voc", images, {"train": list(images), "val": ["gray"]})
    _write(voc / "JPEGImages" / "gray.png", gray)
    cmyk = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("CMYK")
    cmyk.save(voc / "JPEGImages" / "cmyk.jpg", quality=95)
    (voc / "JPEGImages" / "cmyk.png").unlink()
    xml = voc / "Annotations" / "cmyk.xml"
    xml.write_text(xml.read_text().replace("cmyk.png", "cmyk.jpg"))
    Image.fromarray(deep).save(voc / "JPEGImages" / "deep.png")
    assert Image.open(voc / "JPEGImages" / "deep.png").mode.startswith("I;16")
    examples = {
        e["filename"].decode().rsplit("/", 1)[-1]: e for e in _examples(_cfg(voc, tmp_path))
    }
    assert all(e["image"].shape == (32, 32, 3) for e in examples.values())
    np.testing.assert_array_equal(
        examples["gray.png"]["image"], np.repeat(gray[..., None], 3, axis=-1)
    )
    expected = np.round(deep.astype(np.float64) * 255 / 65535)
    got = examples["deep.png"]["image"][..., 0].astype(np.float64)
    assert np.abs(got - expected).max() <= 1  # scaled, not clipped to white
    assert examples["cmyk.jpg"]["image"].dtype == np.uint8
    assert len(examples["cmyk.jpg"]["boxes"]) == 1


def _coco(tmp_path, images, annotations):
    root = tmp_path / "coco"
    (root / "train").mkdir(parents=True)
    for entry in images:
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "train" / entry["file_name"])
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CLASSES[0]}, {"id": 2, "name": CLASSES[1]}],
    }
    path = root / "instances_train.json"
    path.write_text(json.dumps(data))
    return path, root / "train"


def test_coco_bad_and_duplicate_ids(tmp_path):
    from rfcn_tf.data.sources.coco_json import coco_source

    images = [
        {"id": 1, "file_name": "a.png", "height": 20, "width": 20},
        {"id": 2, "file_name": "b.png", "height": 20, "width": 20},
    ]
    box = {"category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    path, folder = _coco(tmp_path, images, [dict(box, id=7, image_id=3)])
    with pytest.raises(
        DataError,
        match=r"annotation id 7 refers to image_id 3, which is not "
        r"in 'images'",
    ):
        coco_source(path, folder)
    duplicate = images + [{"id": 1, "file_name": "c.png", "height": 20, "width": 20}]
    path, folder = _coco(tmp_path / "dup", duplicate, [dict(box, id=7, image_id=1)])
    # Issue 12 item 4: merged annotations would give a.png the boxes of c.png.
    with pytest.raises(DataError, match=r"image id 1 is used twice, by 'a\.png' and 'c\.png'"):
        coco_source(path, folder)
