"""Tests for rfcn_tf.model.proposals.generate_proposals against a float64 NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.fn_reference import np_proposals

from rfcn_tf.model.anchors import AnchorGenerator
from rfcn_tf.model.proposals import generate_proposals


def _scene(seed, b=2, h=6, w=7):
    rng = np.random.default_rng(seed)
    anchors = AnchorGenerator(stride=16, scales=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))(h, w)
    n = anchors.shape[0]
    logits = rng.normal(size=(b, n)).astype(np.float32) * 3
    deltas = (rng.normal(size=(b, n, 4)) * 0.3).astype(np.float32)
    return logits, deltas, anchors.numpy()


@pytest.mark.parametrize(
    "pre_n, post_n, nms_iou, min_size",
    [(60, 20, 0.7, 0.0), (1000, 50, 0.5, 20.0), (30, 40, 0.3, 0.0)],
)
def test_matches_reference(pre_n, post_n, nms_iou, min_size):
    logits, deltas, anchors = _scene(0)
    shapes = np.array([[96, 112], [70, 50]], np.int32)  # second image padded
    props, scores, num = generate_proposals(
        logits,
        deltas,
        anchors,
        shapes,
        pre_nms_top_n=pre_n,
        post_nms_top_n=post_n,
        nms_iou=nms_iou,
        min_size=min_size,
    )
    assert props.shape == (2, post_n, 4) and scores.shape == (2, post_n) and num.shape == (2,)
    for i in range(2):
        ref_boxes, ref_scores = np_proposals(
            logits[i], deltas[i], anchors, shapes[i], pre_n, post_n, nms_iou, min_size
        )
        k = int(num[i])
        assert k == len(ref_boxes)
        np.testing.assert_allclose(props[i, :k], ref_boxes, atol=1e-3)
        np.testing.assert_allclose(scores[i, :k], ref_scores, rtol=1e-5)
        np.testing.assert_array_equal(props[i, k:], 0.0)
        np.testing.assert_array_equal(scores[i, k:], 0.0)
        # clipped to the real image, not the padded one
        assert np.all(props[i, :k, 2] <= shapes[i, 0]) and np.all(props[i, :k, 3] <= shapes[i, 1])
    if pre_n < post_n:
        assert np.all(num.numpy() <= pre_n)


def test_nms_suppresses_duplicates_and_pads():
    anchors = np.array(
        [[0, 0, 20, 20], [0, 0, 20, 21], [40, 40, 60, 60], [0, 0, 20, 20]], np.float32
    )
    logits = np.array([[2.0, 3.0, 1.0, -1.0]], np.float32)
    deltas = np.zeros((1, 4, 4), np.float32)
    props, scores, num = generate_proposals(
        logits, deltas, anchors, [[100, 100]], pre_nms_top_n=10, post_nms_top_n=5, nms_iou=0.7
    )
    assert int(num[0]) == 2
    np.testing.assert_allclose(
        props[0], [[0, 0, 20, 21], [40, 40, 60, 60], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_allclose(scores[0, :2], 1 / (1 + np.exp([-3.0, -1.0])), rtol=1e-6)


def test_min_size_and_padding_area_anchors_dropped():
    # anchor 1 is wholly in the padding (image 30 x 30): clipped to zero area, never proposed
    anchors = np.array([[0, 0, 20, 20], [40, 40, 60, 60], [0, 0, 4, 4]], np.float32)
    logits = np.array([[0.0, 5.0, 4.0]], np.float32)
    props, _, num = generate_proposals(
        logits,
        np.zeros((1, 3, 4), np.float32),
        anchors,
        [[30, 30]],
        pre_nms_top_n=3,
        post_nms_top_n=3,
        min_size=5.0,
    )
    assert int(num[0]) == 1
    np.testing.assert_allclose(props[0, 0], [0, 0, 20, 20])


def test_tf_function_unknown_sizes_no_retrace_and_no_gradient():
    traces = []
    gen = AnchorGenerator(stride=16, scales=(32,), aspect_ratios=(1.0,))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None, 2], tf.int32),
        ]
    )
    def f(logits, deltas, anchors, shapes):
        traces.append(1)
        return generate_proposals(
            logits, deltas, anchors, shapes, pre_nms_top_n=50, post_nms_top_n=8
        )

    for b, h, w in [(1, 3, 4), (2, 5, 2), (3, 1, 1)]:
        anchors = gen(h, w)
        n = h * w
        logits = tf.random.normal([b, n])
        deltas = tf.random.normal([b, n, 4]) * 0.1
        props, scores, num = f(logits, deltas, anchors, tf.fill([b, 2], 16 * max(h, w)))
        assert props.shape == (b, 8, 4) and scores.shape == (b, 8)
        assert np.all(num.numpy() <= min(n, 8)) and np.all(num.numpy() >= 1)
    assert len(traces) == 1

    logits = tf.Variable(tf.random.normal([1, 4]))
    deltas = tf.Variable(tf.zeros([1, 4, 4]))
    with tf.GradientTape() as tape:
        props, scores, _ = generate_proposals(
            logits, deltas, gen(2, 2), [[32, 32]], pre_nms_top_n=4, post_nms_top_n=4
        )
        y = tf.reduce_sum(props) + tf.reduce_sum(scores)
    assert all(g is None for g in tape.gradient(y, [logits, deltas]))


def test_converts_to_onnx_and_matches():
    """The serving export runs generate_proposals; tf2onnx must keep dropped boxes finite
    (an earlier -inf mask became NaN scores and zero proposals in onnxruntime)."""
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    spec = [
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None, 4], tf.float32),
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None, 2], tf.int32),
    ]

    @tf.function(input_signature=spec)
    def f(logits, deltas, anchors, shapes):
        return generate_proposals(
            logits, deltas, anchors, shapes, pre_nms_top_n=100, post_nms_top_n=20, min_size=4.0
        )

    logits, deltas, anchors = _scene(4, h=5, w=6)
    args = [logits, deltas, anchors, np.array([[80, 96], [60, 50]], np.int32)]
    expected = [t.numpy() for t in f(*args)]
    model, _ = tf2onnx.convert.from_function(f, input_signature=spec, opset=17)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), args)})
    np.testing.assert_array_equal(got[2], expected[2])
    assert np.all(expected[2] > 5)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-3)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
