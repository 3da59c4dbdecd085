"""The public inference API: rfcn_tf.load -> Detector.predict -> Detections (both backends)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import rfcn_tf
from rfcn_tf.errors import InputError, RfcnError

CLASS_NAMES = ["circle", "square", "triangle"]
OVERRIDES = [
    "model.head.psroi_impl=tf",
    "model.rpn.pre_nms_top_n_test=300",
    "model.rpn.post_nms_top_n_test=50",
    "model.postprocess.max_detections=30",
]


def _image(seed, shape=(256, 256, 3)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, shape, dtype=np.uint8)
    image[40:120, 60:200] = (220, 40, 40)
    image[150:230, 20:90] = (30, 200, 60)
    return image


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder (config.yaml, classes.txt, checkpoints/ckpt-1) and its SavedModel export."""
    from rfcn_tf.config import load_config
    from rfcn_tf.export.saved_model import export_saved_model
    from rfcn_tf.model.builder import build_detector
    from rfcn_tf.run_dir import write_run_files

    root = tmp_path_factory.mktemp("detector")
    work = str(root / "run")
    cfg = load_config("shapes_tiny", OVERRIDES)
    keras.utils.set_random_seed(0)
    model = build_detector(cfg.model, num_classes=len(CLASS_NAMES))
    for variable in model.variables:  # spread untrained scores: no float32 ties
        if variable.path.endswith(("class_maps/kernel", "rpn_objectness/kernel")):
            variable.assign(variable * 100.0)
    write_run_files(work, cfg, class_names=CLASS_NAMES)
    checkpoint = tf.train.Checkpoint(
        model=model, step=tf.Variable(1, dtype=tf.int64), num_classes=tf.Variable(len(CLASS_NAMES))
    )
    prefix = tf.train.CheckpointManager(
        checkpoint, os.path.join(work, "checkpoints"), max_to_keep=2
    ).save(checkpoint_number=1)
    version = export_saved_model(
        model,
        class_names=CLASS_NAMES,
        out_dir=str(root / "export"),
        model_name="rfcn",
        version=1,
        min_size=256,
        max_size=256,
        verify=False,
    )
    return {
        "work": work,
        "prefix": prefix,
        "version": str(version),
        "base": str(root / "export" / "rfcn"),
    }


def test_load_every_kind_of_path(run):
    kinds = {
        "work": "checkpoint",
        "prefix": "checkpoint",
        "version": "saved_model",
        "base": "saved_model",
    }
    paths = dict(run, folder=os.path.join(run["work"], "checkpoints"))
    kinds["folder"] = "checkpoint"
    for key, kind in kinds.items():
        detector = rfcn_tf.load(paths[key])
        assert detector.backend == kind, key
        assert detector.class_names == CLASS_NAMES
    with pytest.raises(InputError, match="nowhere"):
        rfcn_tf.load(os.path.join(run["work"], "nowhere"))


def test_checkpoint_and_saved_model_give_the_same_detections(run):
    images = [_image(0), _image(1, (200, 300, 3))]
    ckpt = rfcn_tf.load(run["work"]).predict(images, score_threshold=0.0)
    saved = rfcn_tf.load(run["base"]).predict(images, score_threshold=0.0)
    for a, b in zip(ckpt, saved):
        assert len(a) > 0 and len(a) == len(b)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        assert a.class_names == [CLASS_NAMES[i - 1] for i in a.class_ids]


def test_boxes_are_in_original_pixels(run):
    detector = rfcn_tf.load(run["prefix"], score_threshold=0.0)
    image = _image(2)
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # resizes back to the same pixels
    small, large = detector.predict([image, big])
    assert large.image_size == (512, 512) and len(small) > 0
    np.testing.assert_allclose(large.boxes, 2 * small.boxes, atol=1.0)
    assert small.boxes.dtype == np.float32 and small.boxes.shape == (len(small), 4)


def test_box_formats_round_trip(run):
    detector = rfcn_tf.load(run["prefix"], score_threshold=0.0)
    image = _image(3)
    xyxy = detector.predict(image)
    yxyx = detector.predict(image, box_format="yxyx")
    xywh = detector.predict(image, box_format="xywh")
    np.testing.assert_allclose(xyxy.boxes, yxyx.boxes[:, [1, 0, 3, 2]], atol=1e-4)
    np.testing.assert_allclose(xywh.boxes[:, 2:], xyxy.boxes[:, 2:] - xyxy.boxes[:, :2], atol=1e-4)
    for fmt in ("xyxy", "yxyx", "xywh"):
        np.testing.assert_allclose(
            xywh.boxes_as(fmt), detector.predict(image, box_format=fmt).boxes, atol=1e-4
        )
    assert np.all(xyxy.boxes[:, 2] <= 256) and np.all(xyxy.boxes >= 0)


def test_a_list_of_mixed_sizes_in_one_call(run, tmp_path):
    from PIL import Image

    detector = rfcn_tf.load(run["work"], score_threshold=0.0)
    images = [_image(4), _image(5, (180, 256, 3)), _image(6, (300, 120, 3))]
    path = tmp_path / "a.png"
    Image.fromarray(images[0]).save(path)
    batch = detector.predict([str(path), Image.fromarray(images[1]), images[2]], batch_size=3)
    assert [d.image_size for d in batch] == [(256, 256), (180, 256), (300, 120)]
    for image, got in zip(images, batch):
        alone = detector.predict(image)
        np.testing.assert_allclose(got.boxes, alone.boxes, atol=1e-2)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)
    drawn = batch[0].draw(images[0])
    assert drawn.shape == images[0].shape and (drawn != images[0]).any()


def test_bad_input_raises_one_package_error_naming_it(run, tmp_path):
    detector = rfcn_tf.load(run["prefix"])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    for bad, words in [
        (str(tmp_path / "broken.jpg"), "broken.jpg"),
        (str(tmp_path / "missing.png"), "missing.png"),
        (np.zeros((10, 10, 3), np.float32), "float32"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((4, 10, 10, 3), np.uint8), "shape"),
    ]:
        with pytest.raises(InputError, match=words) as info:
            detector.predict([bad])
        assert isinstance(info.value, RfcnError)
    with pytest.raises(InputError, match="box_format"):
        detector.predict(_image(0), box_format="cxcywh")
