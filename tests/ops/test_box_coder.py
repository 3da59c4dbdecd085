"""Tests for rfcn_tf.ops.box_coder: float64 reference, identities, clamping."""

import math

import numpy as np
import pytest

from rfcn_tf.ops.box_coder import BBOX_XFORM_CLIP, decode_boxes, encode_boxes


def _np_encode(boxes, anchors, weights):
    boxes, anchors = np.asarray(boxes, np.float64), np.asarray(anchors, np.float64)
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    yc, xc = boxes[..., 0] + h / 2, boxes[..., 1] + w / 2
    yca, xca = anchors[..., 0] + ha / 2, anchors[..., 1] + wa / 2
    return np.stack(
        [
            weights[0] * (yc - yca) / ha,
            weights[1] * (xc - xca) / wa,
            weights[2] * np.log(h / ha),
            weights[3] * np.log(w / wa),
        ],
        -1,
    )


def _random_boxes(rng, n):
    yx = rng.uniform(-20, 100, (n, 2))
    hw = rng.uniform(1, 80, (n, 2))
    return np.concatenate([yx, yx + hw], 1)


def test_encode_hand_computed():
    anchor = [[0.0, 0.0, 10.0, 20.0]]  # centre (5, 10), h 10, w 20
    box = [[2.0, 4.0, 22.0, 24.0]]  # centre (12, 14), h 20, w 20
    got = encode_boxes(box, anchor).numpy()
    np.testing.assert_allclose(got, [[0.7, 0.2, math.log(2.0), 0.0]], rtol=1e-6)
    got_w = encode_boxes(box, anchor, weights=(10, 10, 5, 5)).numpy()
    np.testing.assert_allclose(got_w, [[7.0, 2.0, 5 * math.log(2.0), 0.0]], rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_reference_and_roundtrips(weights):
    rng = np.random.default_rng(1)
    boxes, anchors = _random_boxes(rng, 50), _random_boxes(rng, 50)
    deltas = encode_boxes(boxes, anchors, weights).numpy()
    assert deltas.dtype == np.float64
    np.testing.assert_allclose(deltas, _np_encode(boxes, anchors, weights), rtol=1e-12)
    np.testing.assert_allclose(
        decode_boxes(deltas, anchors, weights).numpy(), boxes, rtol=1e-10, atol=1e-10
    )
    # float32 round trip to pixel precision
    d32 = encode_boxes(boxes.astype(np.float32), anchors.astype(np.float32), weights)
    np.testing.assert_allclose(
        decode_boxes(d32, anchors.astype(np.float32), weights).numpy(), boxes, atol=1e-3
    )


def test_decode_broadcasts_anchors_over_batch():
    rng = np.random.default_rng(2)
    anchors = _random_boxes(rng, 6).astype(np.float32)
    deltas = rng.normal(size=(3, 6, 4)).astype(np.float32)
    got = decode_boxes(deltas, anchors).numpy()
    for b in range(3):
        np.testing.assert_allclose(got[b], decode_boxes(deltas[b], anchors).numpy(), rtol=1e-6)


def test_decode_clamps_scale():
    anchor = np.array([[0.0, 0.0, 16.0, 16.0]], np.float32)
    got = decode_boxes([[0.0, 0.0, 100.0, 100.0]], anchor).numpy()
    assert np.all(np.isfinite(got))
    side = 16.0 * math.exp(BBOX_XFORM_CLIP)  # 1000
    np.testing.assert_allclose(
        got, [[8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2]], rtol=1e-5
    )
    # with weights, the clamp applies after dividing by the weight
    got_w = decode_boxes([[0.0, 0.0, 5 * 100.0, 5 * 100.0]], anchor, (10, 10, 5, 5)).numpy()
    np.testing.assert_allclose(got_w, got, rtol=1e-5)


def test_encode_degenerate_boxes_stay_finite():
    pad = np.full((2, 4), -1.0, np.float32)
    anchors = np.array([[0, 0, 16, 16], [0, 0, 0, 0]], np.float32)
    assert np.all(np.isfinite(encode_boxes(pad, anchors).numpy()))


def test_bad_weights_rejected():
    with pytest.raises(ValueError, match="weights"):
        encode_boxes([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], weights=(1, 1, 0, 1))
