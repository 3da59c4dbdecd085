"""RPN head: shapes, anchor alignment of its channels, initialization, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.model.anchors import AnchorGenerator
from rfcn_tf.model.rpn import RPNHead, flatten_rpn_outputs


@pytest.mark.parametrize("batch,height,width,anchors", [(1, 5, 7, 9), (2, 3, 4, 3), (2, 1, 1, 1)])
def test_output_shapes(batch, height, width, anchors):
    head = RPNHead(num_anchors=anchors, channels=16)
    logits, deltas = head(tf.random.normal([batch, height, width, 8]))
    assert tuple(logits.shape) == (batch, height, width, anchors)
    assert tuple(deltas.shape) == (batch, height, width, 4 * anchors)
    assert head.compute_output_shape((batch, height, width, 8)) == (
        (batch, height, width, anchors),
        (batch, height, width, 4 * anchors),
    )


def test_matches_a_float64_numpy_reference():
    """3x3 'same' conv + ReLU, then the two 1x1 convs, written out with NumPy in float64."""
    rng = np.random.default_rng(0)
    head = RPNHead(num_anchors=2, channels=3)
    features = rng.normal(size=(1, 4, 5, 2))
    head.build(features.shape)
    for variable in head.weights:
        variable.assign(rng.normal(size=variable.shape))
    logits, deltas = head(tf.constant(features, tf.float32))

    w3, b3 = head.conv.kernel.numpy().astype(np.float64), head.conv.bias.numpy().astype(np.float64)
    padded = np.pad(features, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hidden = np.zeros((1, 4, 5, 3))
    for y in range(4):
        for x in range(5):
            window = padded[0, y : y + 3, x : x + 3, :]  # [3, 3, Cin]
            hidden[0, y, x] = np.einsum("ijc,ijco->o", window, w3) + b3
    hidden = np.maximum(hidden, 0.0)
    expected_logits = (
        hidden @ head.objectness.kernel.numpy()[0, 0].astype(np.float64)
        + head.objectness.bias.numpy()
    )
    expected_deltas = (
        hidden @ head.box_deltas.kernel.numpy()[0, 0].astype(np.float64)
        + head.box_deltas.bias.numpy()
    )
    np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas.numpy(), expected_deltas, rtol=1e-4, atol=1e-4)


def test_flattened_rows_line_up_with_anchor_generator():
    """Row n of the flattened outputs belongs to anchor n of AnchorGenerator (y, x, a order)."""
    generator = AnchorGenerator(stride=16, scales=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))
    a = generator.num_anchors_per_location
    h, w = 3, 4
    # Encode (y, x, a) into the maps so every flattened row can be decoded back.
    y, x, k = np.meshgrid(np.arange(h), np.arange(w), np.arange(a), indexing="ij")
    code = (y * 100 + x * 10 + k).astype(np.float32)  # [h, w, A]
    logits_map = code[None]
    deltas_map = np.repeat(code[..., None], 4, axis=-1).reshape(1, h, w, 4 * a)
    deltas_map = deltas_map + np.tile(np.arange(4, dtype=np.float32) / 10, a)  # channel 4a + j
    logits, deltas = flatten_rpn_outputs(tf.constant(logits_map), tf.constant(deltas_map))
    anchors = generator(h, w).numpy()
    assert logits.shape == (1, h * w * a) and deltas.shape == (1, h * w * a, 4)
    for n in (0, 5, 17, h * w * a - 1):
        cy, cx = (anchors[n, 0] + anchors[n, 2]) / 2, (anchors[n, 1] + anchors[n, 3]) / 2
        yy, xx = int(cy // 16), int(cx // 16)
        kk = int(round(logits.numpy()[0, n])) % 10
        assert int(round(logits.numpy()[0, n])) == yy * 100 + xx * 10 + kk
        assert n % a == kk
        np.testing.assert_allclose(
            deltas.numpy()[0, n], logits.numpy()[0, n] + np.arange(4) / 10, atol=1e-5
        )


def test_initialization_is_gaussian_0_01_with_zero_bias():
    keras.utils.set_random_seed(1)
    head = RPNHead(num_anchors=9, channels=256)
    head.build((None, None, None, 512))
    assert 0.009 < float(np.std(head.conv.kernel.numpy())) < 0.011
    assert abs(float(np.mean(head.conv.kernel.numpy()))) < 1e-3
    for layer in (head.conv, head.objectness, head.box_deltas):
        assert not np.any(layer.bias.numpy())


def test_config_equals_constructor_kwargs_and_roundtrips():
    kwargs = dict(num_anchors=6, channels=32, init_stddev=0.02)
    head = RPNHead(**kwargs, name="rpn")
    config = head.get_config()
    assert {key: config[key] for key in kwargs} == kwargs
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(clone, RPNHead) and clone.get_config() == config


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_anchors=0"):
        RPNHead(num_anchors=0)
    with pytest.raises(ValueError, match="channels=-1"):
        RPNHead(num_anchors=3, channels=-1)
