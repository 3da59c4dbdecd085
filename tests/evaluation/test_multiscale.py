"""Tests for rfcn_tf.evaluation.multiscale: per-scale resizing, frame mapping, NMS merge."""

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.evaluation.multiscale import merge_detections, multiscale_detect_fn

M = 10


class FakeDetector:
    """Records its inputs; 'detects' boxes at fixed fractions of the image it is given.

    Per call (one image of real size (h, w)):
      class 1 at [.2h, .2w, .6h, .6w], score 0.5 + h / 1000 (same place at every scale);
      class 2 at the same place, score 0.3;
      class 1 at [.7h, .7w, .9h, .9w] only when h > 60 (the large scale finds a small object).
    """

    def __init__(self):
        self.calls = []

    def __call__(self, images, image_shapes):
        images = images.numpy()
        h, w = (int(v) for v in image_shapes.numpy()[0])
        self.calls.append((images.shape, (h, w), images[0, :h, :w].copy()))
        rows = [
            ([0.2 * h, 0.2 * w, 0.6 * h, 0.6 * w], 0.5 + h / 1000, 1),
            ([0.2 * h, 0.2 * w, 0.6 * h, 0.6 * w], 0.3, 2),
        ]
        if h > 60:
            rows.append(([0.7 * h, 0.7 * w, 0.9 * h, 0.9 * w], 0.4, 1))
        boxes = np.zeros((1, M, 4), np.float32)
        scores = np.zeros((1, M), np.float32)
        classes = np.zeros((1, M), np.int32)
        for i, (b, s, c) in enumerate(rows):
            boxes[0, i], scores[0, i], classes[0, i] = b, s, c
        boxes[0, len(rows) :] = 999.0  # padding garbage must be ignored
        return {
            "detection_boxes": tf.constant(boxes),
            "detection_scores": tf.constant(scores),
            "detection_classes": tf.constant(classes),
            "num_detections": tf.constant([len(rows)], tf.int32),
        }


def _batch():
    # image 0: real 100 x 200; image 1: real 80 x 60 inside the 100 x 200 padded batch.
    images = np.full((2, 100, 200, 3), 255, np.uint8)
    images[0] = 10
    images[1, :80, :60] = 20
    return tf.constant(images), tf.constant([[100, 200], [80, 60]], tf.int32)


def test_each_scale_sees_the_real_region_resized_and_padded():
    fake = FakeDetector()
    detect = multiscale_detect_fn(fake, sizes=[50, 100], max_size=400, max_detections=M)
    images, shapes = _batch()
    detect(images, shapes)
    assert len(fake.calls) == 4  # 2 images x 2 sizes
    (s0, hw0, px0), (s1, hw1, px1), (s2, hw2, _), (s3, hw3, px3) = fake.calls
    assert hw0 == (50, 100) and hw1 == (100, 200)
    assert hw2[1] == 50 and hw3[1] == 100  # image 1 is portrait: shorter side is the width
    for shape, hw in ((s0, hw0), (s1, hw1), (s2, hw2), (s3, hw3)):
        assert shape[1] % 16 == 0 and shape[2] % 16 == 0
        assert shape[1] - hw[0] < 16 and shape[2] - hw[1] < 16
    assert (px0 == 10).all() and (px1 == 10).all()
    assert (px3 == 20).all()  # the padding (255) of the batch never reaches the detector


def test_max_size_caps_the_longer_side():
    fake = FakeDetector()
    detect = multiscale_detect_fn(fake, sizes=[100], max_size=150, max_detections=M)
    images, shapes = _batch()
    detect(images[:1], shapes[:1])
    assert fake.calls[0][1] == (75, 150)


def test_merge_maps_back_to_input_frame_and_suppresses_duplicates():
    fake = FakeDetector()
    detect = multiscale_detect_fn(
        fake, sizes=[50, 100], max_size=400, nms_iou=0.3, max_detections=M
    )
    images, shapes = _batch()
    out = {k: v.numpy() for k, v in detect(images, shapes).items()}
    assert out["detection_boxes"].shape == (2, M, 4)
    assert out["detection_classes"].dtype == np.int32
    # image 0: class-1 box from both scales merged (the higher score, scale 100, survives),
    # class 2 kept separately (NMS is per class), the small object only from scale 100.
    assert out["num_detections"][0] == 3
    np.testing.assert_allclose(out["detection_scores"][0, :3], [0.6, 0.4, 0.3], atol=1e-6)
    np.testing.assert_array_equal(out["detection_classes"][0, :3], [1, 1, 2])
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [20, 40, 60, 120], atol=1e-3)
    np.testing.assert_allclose(out["detection_boxes"][0, 1], [70, 140, 90, 180], atol=1e-3)
    np.testing.assert_allclose(out["detection_boxes"][0, 2], [20, 40, 60, 120], atol=1e-3)
    assert not out["detection_boxes"][0, 3:].any() and not out["detection_scores"][0, 3:].any()
    # image 1 (80 x 60): boxes in its own 80 x 60 frame
    np.testing.assert_allclose(out["detection_boxes"][1, 0], [16, 12, 48, 36], atol=0.2)


def test_merge_detections_per_class_and_top_m():
    boxes = tf.constant(
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], tf.float32
    )
    scores = tf.constant([0.9, 0.8, 0.7, 0.6])
    classes = tf.constant([1, 1, 2, 1])
    out = merge_detections(boxes, scores, classes, nms_iou=0.5, max_detections=2)
    assert int(out["num_detections"]) == 2
    np.testing.assert_allclose(out["detection_scores"].numpy(), [0.9, 0.7])
    np.testing.assert_array_equal(out["detection_classes"].numpy(), [1, 2])
    empty = merge_detections(
        tf.zeros([0, 4]), tf.zeros([0]), tf.zeros([0], tf.int32), nms_iou=0.5, max_detections=3
    )
    assert int(empty["num_detections"]) == 0 and empty["detection_boxes"].shape == (3, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sizes=[], max_size=10), "sizes must be positive"),
        (dict(sizes=[100, 200], max_size=150), r"max_size \(150\) must be >= the largest size"),
        (dict(sizes=[10], max_size=10, nms_iou=0.0), "nms_iou must be in"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multiscale_detect_fn(FakeDetector(), **kwargs)
