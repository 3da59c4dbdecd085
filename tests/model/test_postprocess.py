"""Tests for rfcn_tf.model.postprocess.postprocess_detections (per-class NMS, padding, ONNX)."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.fn_reference import np_clip, np_decode, np_nms

from rfcn_tf.model.postprocess import postprocess_detections

W = (10.0, 10.0, 5.0, 5.0)


def _probs(rows):
    """Rows of per-class scores (classes 1..C) -> [R, C + 1] with background = 1 - sum."""
    rows = np.asarray(rows, np.float32)
    return np.concatenate([1 - rows.sum(-1, keepdims=True), rows], -1)


def _run(rois, probs, deltas=None, shapes=((100, 100),), valid=None, **kw):
    rois = np.asarray(rois, np.float32)[None] if np.ndim(rois) == 2 else np.asarray(rois)
    probs = np.asarray(probs, np.float32)[None] if np.ndim(probs) == 2 else np.asarray(probs)
    if deltas is None:
        deltas = np.zeros(rois.shape, np.float32)
    deltas = np.asarray(deltas, np.float32)[None] if np.ndim(deltas) == 2 else np.asarray(deltas)
    if valid is None:
        valid = np.ones(rois.shape[:2], bool)
    return {
        k: v.numpy()
        for k, v in postprocess_detections(
            rois, probs, deltas, np.asarray(shapes), valid, **kw
        ).items()
    }


def test_per_class_nms_keeps_other_classes_and_pads():
    rois = [[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]]
    probs = _probs([[0.9, 0.05], [0.05, 0.8], [0.6, 0.0]])
    out = _run(rois, probs, max_detections=6, nms_iou=0.3)
    n = out["num_detections"][0]
    assert n == 3
    # ROI 1 overlaps ROI 0 (IoU 10/11) but has another class: both kept; the class-1 copy
    # of ROI 1 (0.05) is suppressed by ROI 0, the class-2 copy of ROI 0 (0.05) by ROI 1
    np.testing.assert_allclose(out["detection_scores"][0, :n], [0.9, 0.8, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(out["detection_classes"][0, :n], [1, 2, 1])
    np.testing.assert_allclose(
        out["detection_boxes"][0, :n], np.asarray(rois)[[0, 1, 2]], atol=1e-4
    )
    assert out["detection_boxes"].shape == (1, 6, 4) and out["detection_classes"].dtype == np.int32
    np.testing.assert_array_equal(out["detection_boxes"][0, n:], 0)
    np.testing.assert_array_equal(out["detection_scores"][0, n:], 0)
    np.testing.assert_array_equal(out["detection_classes"][0, n:], 0)


def test_score_threshold_is_strict_and_max_detections_caps():
    rois = [[10 * i, 0, 10 * i + 8, 8] for i in range(6)]  # disjoint
    scores = [0.9, 0.8, 0.7, 0.3, 0.05, 0.2]
    probs = _probs([[s] for s in scores])
    out = _run(rois, probs, score_threshold=0.2, max_detections=10)
    np.testing.assert_allclose(out["detection_scores"][0, :4], [0.9, 0.8, 0.7, 0.3], rtol=1e-6)
    assert out["num_detections"][0] == 4
    out = _run(rois, probs, score_threshold=0.0, max_detections=3)
    assert out["num_detections"][0] == 3 and out["detection_scores"].shape == (1, 3)
    np.testing.assert_allclose(out["detection_scores"][0], [0.9, 0.8, 0.7], rtol=1e-6)
    out = _run(rois, probs, score_threshold=0.0, max_detections=10, max_detections_per_class=2)
    assert out["num_detections"][0] == 2
    with pytest.raises(ValueError, match="score_threshold"):
        _run(rois, probs, score_threshold=-0.1)


def test_invalid_rois_never_detected_mask_and_counts():
    rois = np.array(
        [
            [[0, 0, 10, 10], [30, 30, 40, 40], [60, 60, 70, 70]],
            [[0, 0, 10, 10], [30, 30, 40, 40], [60, 60, 70, 70]],
        ],
        np.float32,
    )
    probs = np.stack([_probs([[0.5], [0.99], [0.7]])] * 2)
    mask = np.array([[True, False, True], [True, True, True]])
    out = _run(rois, probs, shapes=[[100, 100]] * 2, valid=mask)
    np.testing.assert_array_equal(out["num_detections"], [2, 3])
    np.testing.assert_allclose(out["detection_scores"][0, :2], [0.7, 0.5], rtol=1e-6)
    counts = _run(rois, probs, shapes=[[100, 100]] * 2, valid=np.array([1, 0], np.int32))
    np.testing.assert_array_equal(counts["num_detections"], [1, 0])
    np.testing.assert_array_equal(counts["detection_boxes"][1], 0)


def test_decode_clip_and_nms_match_reference():
    rng = np.random.default_rng(0)
    r, c = 60, 4
    yx = rng.uniform(0, 90, (r, 2))
    rois = np.concatenate([yx, yx + rng.uniform(10, 40, (r, 2))], -1).astype(np.float32)
    deltas = (rng.normal(size=(r, 4)) * 2).astype(np.float32)
    logits = rng.normal(size=(r, c + 1)) * 2
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    out = _run(
        rois,
        probs,
        deltas,
        shapes=[[80, 110]],
        score_threshold=0.1,
        nms_iou=0.3,
        max_detections=200,
    )
    boxes = np_clip(np_decode(deltas, rois, W), 80, 110)
    ref = []
    for k in range(1, c + 1):
        s = np.where(probs[:, k] > 0.1, probs[:, k].astype(np.float64), -np.inf)
        ref += [(s[i], k, i) for i in np_nms(boxes, s, 0.3, 100)]
    ref.sort(key=lambda e: -e[0])
    n = out["num_detections"][0]
    assert n == len(ref) > 10
    np.testing.assert_allclose(out["detection_scores"][0, :n], [e[0] for e in ref], rtol=1e-6)
    # the same (class, box) pairs (order among equal scores may differ)
    got = sorted(
        (int(cl), tuple(np.round(b, 2)))
        for cl, b in zip(out["detection_classes"][0, :n], out["detection_boxes"][0, :n])
    )
    exp = sorted((k, tuple(np.round(boxes[i].astype(np.float32), 2))) for _, k, i in ref)
    assert [g[0] for g in got] == [e[0] for e in exp]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in exp], atol=0.02)


def test_tf_function_unknown_sizes_and_onnx_conversion():
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    traces = []

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None, 3], tf.float32),
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, 2], tf.int32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def f(rois, probs, deltas, shapes, num):
        traces.append(1)
        out = postprocess_detections(rois, probs, deltas, shapes, num, max_detections=5)
        return (
            out["detection_boxes"],
            out["detection_scores"],
            out["detection_classes"],
            out["num_detections"],
        )

    rng = np.random.default_rng(1)
    for b, r in [(1, 7), (2, 12)]:
        yx = rng.uniform(0, 50, (b, r, 2))
        rois = np.concatenate([yx, yx + 20], -1).astype(np.float32)
        probs = rng.dirichlet(np.ones(3), (b, r)).astype(np.float32)
        deltas = (rng.normal(size=(b, r, 4))).astype(np.float32)
        args = (rois, probs, deltas, np.full((b, 2), 60, np.int32), np.full((b,), r, np.int32))
        tf_out = [t.numpy() for t in f(*args)]
        assert tf_out[0].shape == (b, 5, 4)
    assert len(traces) == 1

    model, _ = tf2onnx.convert.from_function(f, input_signature=f.input_signature, opset=17)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), args)})
    for got, exp in zip(onnx_out, tf_out):
        np.testing.assert_allclose(got, exp, atol=1e-4)
