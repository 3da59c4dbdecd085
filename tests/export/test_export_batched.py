"""Batched signatures on the tiny real model: a batch equals its single-image calls, mixed sizes
through serving_encoded and tf_example, the OD API's raw outputs consistent with the
detections, serving_custom's request-time post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers.export_helpers import assert_outputs_close, reference_outputs, synthetic_image

from rfcn_tf.export.contract import ALL_OUTPUT_KEYS


def _np(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


def _row(outputs, index):
    return {k: v[index : index + 1] for k, v in outputs.items()}


@pytest.fixture(scope="module")
def images():
    """Three images of one size and one of another (portrait)."""
    same = [synthetic_image(240, 300, seed=s) for s in (11, 12, 13)]
    return same, synthetic_image(300, 190, seed=14)


@pytest.fixture(scope="module")
def singles(loaded, images):
    same, other = images
    return [
        _np(loaded.signatures["serving_default"](input_tensor=tf.constant(im[None])))
        for im in same + [other]
    ]


def test_batch_of_three_equals_three_single_calls(tiny_model, loaded, images, singles):
    same, _ = images
    batch = _np(loaded.signatures["serving_default"](input_tensor=tf.constant(np.stack(same))))
    assert set(batch) == set(ALL_OUTPUT_KEYS)
    assert batch["detection_boxes"].shape[:2] == (3, 30)
    for index in range(3):
        assert_outputs_close(_row(batch, index), singles[index], atol=1e-4)
    # ... and the single calls are the in-Python model's detections.
    assert singles[0]["num_detections"][0] > 0
    assert_outputs_close(singles[0], reference_outputs(tiny_model[1], same[0]), atol=1e-4)


def test_encoded_mixed_sizes_equal_single_calls(loaded, images, singles):
    """PNGs of two sizes in one request (each at its own padded size), and a same-size batch
    (one padded batch): every row equals that image's own call."""
    same, other = images
    pngs = [tf.io.encode_png(im).numpy() for im in same + [other]]
    mixed = _np(
        loaded.signatures["serving_encoded"](
            encoded_image_string_tensor=tf.constant([pngs[3], pngs[0], pngs[1]])
        )
    )
    for row, single in enumerate([singles[3], singles[0], singles[1]]):
        assert_outputs_close(_row(mixed, row), single, atol=1e-4)
    uniform = _np(
        loaded.signatures["serving_encoded"](encoded_image_string_tensor=tf.constant(pngs[:3]))
    )
    for row in range(3):
        assert_outputs_close(_row(uniform, row), singles[row], atol=1e-4)


def test_tf_example_batch(loaded, images, singles):
    same, other = images

    def example(image):
        png = tf.io.encode_png(image).numpy()
        return tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                    "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
                }
            )
        ).SerializeToString()

    out = _np(
        loaded.signatures["tf_example"](tf_example=tf.constant([example(other), example(same[2])]))
    )
    assert_outputs_close(_row(out, 0), singles[3], atol=1e-4)
    assert_outputs_close(_row(out, 1), singles[2], atol=1e-4)


def test_raw_outputs_consistent_with_detections(loaded, singles):
    """Shapes and dtypes as the OD API's; each kept detection is one of the raw (pre-NMS)
    RoIs: its box is that RoI's raw box, its score that RoI's raw score for its class, and
    its multiclass scores that RoI's raw softmax."""
    out = singles[0]
    n, m = out["detection_scores"].shape
    r = out["raw_detection_boxes"].shape[1]
    assert (n, m, r) == (1, 30, 50)
    assert out["detection_multiclass_scores"].shape == (1, 30, 4)
    assert out["raw_detection_scores"].shape == (1, 50, 4)
    assert all(v.dtype == np.float32 for v in out.values())
    count = int(out["num_detections"][0])
    assert count > 0
    rows = out["detection_anchor_indices"][0, :count].astype(int)
    assert np.all((rows >= 0) & (rows < r))
    classes = out["detection_classes"][0, :count].astype(int)
    np.testing.assert_allclose(
        out["raw_detection_boxes"][0, rows], out["detection_boxes"][0, :count], atol=1e-6
    )
    np.testing.assert_allclose(
        out["raw_detection_scores"][0, rows, classes], out["detection_scores"][0, :count], atol=1e-6
    )
    np.testing.assert_allclose(
        out["detection_multiclass_scores"][0, :count],
        out["raw_detection_scores"][0, rows],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        out["detection_multiclass_scores"][0, :count].sum(-1), 1.0, atol=1e-5
    )
    assert not out["detection_multiclass_scores"][0, count:].any()
    assert np.all((out["raw_detection_boxes"] >= 0) & (out["raw_detection_boxes"] <= 1))


def _custom(loaded, image, score, iou, limit):
    return _np(
        loaded.signatures["serving_custom"](
            input_tensor=tf.constant(image[None]),
            score_threshold=tf.constant(score),
            iou_threshold=tf.constant(iou),
            max_detections=tf.constant(limit),
        )
    )


def test_custom_with_defaults_equals_serving_default(loaded, images, singles):
    got = _custom(loaded, images[0][0], 0.05, 0.3, 30)
    assert_outputs_close(got, singles[0], atol=0)


def test_custom_thresholds_change_the_detections(loaded, images, singles):
    base = singles[0]
    count = int(base["num_detections"][0])
    scores = base["detection_scores"][0, :count]
    threshold = float(np.median(scores))
    high = _custom(loaded, images[0][0], threshold, 0.3, 30)
    kept = int(high["num_detections"][0])
    assert kept < count
    assert np.all(high["detection_scores"][0, :kept] > threshold)
    assert not high["detection_scores"][0, kept:].any()
    # A tighter max_detections keeps the top rows of the default call.
    top = _custom(loaded, images[0][0], 0.05, 0.3, 3)
    assert int(top["num_detections"][0]) == min(3, count)
    np.testing.assert_allclose(top["detection_boxes"][0, :3], base["detection_boxes"][0, :3])
    assert not top["detection_boxes"][0, 3:].any()
    # A lower NMS IoU suppresses more, a higher one fewer (or as many).
    loose = _custom(loaded, images[0][0], 0.05, 0.9, 30)
    strict = _custom(loaded, images[0][0], 0.05, 0.05, 30)
    assert int(strict["num_detections"][0]) <= count <= int(loose["num_detections"][0])
    assert int(strict["num_detections"][0]) < int(loose["num_detections"][0])
