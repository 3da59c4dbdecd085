"""R-FCN head: shapes, PS pooling + voting against the float64 reference, impls, config."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.psroi_reference import ps_roi_pool_reference

from rfcn_tf.model.rfcn_head import RFCNHead, flatten_rois
from rfcn_tf.model.sections import HeadConfig
from rfcn_tf.ops import psroi_pool


def _random_rois(rng, batch, count, height, width):
    y1 = rng.uniform(-8, height - 8, (batch, count))
    x1 = rng.uniform(-8, width - 8, (batch, count))
    y2 = y1 + rng.uniform(4, height / 2, (batch, count))
    x2 = x1 + rng.uniform(4, width / 2, (batch, count))
    return np.stack([y1, x1, y2, x2], axis=-1).astype(np.float32)


def test_flatten_rois_prepends_the_batch_index():
    rois = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    flat = flatten_rois(tf.constant(rois)).numpy()
    assert flat.shape == (6, 5)
    np.testing.assert_array_equal(flat[:, 0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(flat[:, 1:], rois.reshape(6, 4))


def make_head(num_classes, **fields):
    """A head with the HeadConfig `fields` (the others default)."""
    return RFCNHead(num_classes=num_classes, config=HeadConfig(**fields))


@pytest.mark.parametrize("k", [3, 7])
@pytest.mark.parametrize("num_classes", [1, 20, 80])
@pytest.mark.parametrize("batch", [1, 2])
def test_output_shapes(k, num_classes, batch):
    head = make_head(num_classes, channels=16, k=k, psroi_impl="tf")
    rois = _random_rois(np.random.default_rng(k), batch, 5, 64, 96)
    logits, deltas = head(tf.random.normal([batch, 4, 6, 8]), tf.constant(rois))
    assert tuple(logits.shape) == (batch, 5, num_classes + 1)
    assert tuple(deltas.shape) == (batch, 5, 1, 4)
    assert head.class_maps.filters == k * k * (num_classes + 1)
    assert head.box_maps.filters == 4 * k * k


@pytest.mark.parametrize("mode", ["avg", "bilinear"])
def test_pooling_and_voting_match_the_float64_reference(mode):
    """class_logits[b, r, c] = mean over bins (i, j) of reference-pooled maps, channel
    (i*k + j)*(C+1) + c of image b (bin-major); box deltas likewise with 4 channels."""
    rng = np.random.default_rng(0)
    k, num_classes, batch, count, h, w = 3, 2, 2, 6, 5, 7
    head = make_head(num_classes, channels=8, k=k, pooling_mode=mode, psroi_impl="tf")
    features = tf.constant(rng.normal(size=(batch, h, w, 4)), tf.float32)
    head.build(features.shape)
    for variable in head.weights:
        variable.assign(rng.normal(size=variable.shape))
    rois = _random_rois(rng, batch, count, 16 * h, 16 * w)
    logits, deltas = head(features, tf.constant(rois))

    class_maps, box_maps = (m.numpy().astype(np.float64) for m in head.score_maps(features))
    flat = np.concatenate([np.repeat(np.arange(batch), count)[:, None], rois.reshape(-1, 4)], 1)
    deltas = tf.reshape(deltas, [batch, count, 4])
    for maps, got, depth in ((class_maps, logits, num_classes + 1), (box_maps, deltas, 4)):
        pooled = ps_roi_pool_reference(
            maps, flat.astype(np.float64), k, 1.0 / 16, mode=mode, sampling_ratio=2
        )
        assert pooled.shape == (batch * count, k, k, depth)
        expected = pooled.mean(axis=(1, 2)).reshape(batch, count, depth)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_score_maps_are_position_sensitive():
    """A RoI covering exactly a k x k block of cells reads bin (i, j) from cell (i, j) only."""
    k, num_classes = 2, 1
    head = make_head(num_classes, channels=4, k=k, psroi_impl="tf")
    features = tf.zeros([1, 2, 2, 3])
    head.build(features.shape)
    # reduce: zero kernel, bias 1 -> hidden == 1 everywhere; class maps = bias pattern.
    head.reduce.kernel.assign(tf.zeros_like(head.reduce.kernel))
    head.reduce.bias.assign(tf.ones_like(head.reduce.bias))
    head.class_maps.kernel.assign(tf.zeros_like(head.class_maps.kernel))
    # Channel (i*k + j)*(C+1) + c; give class 1 the value 10*(i*k+j) in its own bin.
    bias = np.zeros(k * k * (num_classes + 1), np.float32)
    for b in range(k * k):
        bias[b * 2 + 1] = 10.0 * b
    head.class_maps.bias.assign(bias)
    logits, _ = head(features, tf.constant([[[0.0, 0.0, 32.0, 32.0]]]))
    # Maps are constant over space, so each bin reads its own channel value: mean 10*(0+1+2+3)/4.
    np.testing.assert_allclose(logits.numpy()[0, 0], [0.0, 15.0], atol=1e-5)


@pytest.mark.skipif(
    not psroi_pool.custom_op_available(),
    reason=f"compiled PS-RoI op not built: {psroi_pool.custom_op_load_error()}",
)
@pytest.mark.parametrize("mode", ["avg", "bilinear"])
def test_custom_and_tf_impls_agree(mode):
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(2, 6, 9, 16)), tf.float32)
    rois = tf.constant(_random_rois(rng, 2, 30, 96, 144))
    outputs = {}
    for impl in ("custom", "tf"):
        keras.utils.set_random_seed(5)
        head = make_head(20, channels=32, k=7, pooling_mode=mode, psroi_impl=impl)
        outputs[impl] = [t.numpy() for t in head(features, rois)]
    for custom, twin in zip(outputs["custom"], outputs["tf"]):
        np.testing.assert_allclose(custom, twin, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_head_weight():
    head = make_head(3, channels=8, k=3, psroi_impl="tf")
    features = tf.random.normal([1, 4, 4, 6])
    rois = tf.constant([[[0.0, 0.0, 40.0, 40.0], [8.0, 16.0, 60.0, 64.0]]])
    with tf.GradientTape() as tape:
        logits, deltas = head(features, rois)
        loss = tf.reduce_sum(logits**2) + tf.reduce_sum(deltas**2)
    grads = tape.gradient(loss, head.trainable_weights)
    assert len(grads) == 6 and all(g is not None and np.any(g.numpy()) for g in grads)


def test_unknown_shapes_inside_tf_function():
    head = make_head(4, channels=8, k=3, psroi_impl="tf")
    head.build((None, None, None, 6))
    fn = tf.function(
        head.call,
        input_signature=[
            tf.TensorSpec([None, None, None, 6], tf.float32),
            tf.TensorSpec([None, None, 4], tf.float32),
        ],
    )
    for batch, count, h in ((1, 3, 4), (2, 7, 5), (2, 0, 3)):
        logits, deltas = fn(tf.random.normal([batch, h, h + 1, 6]), tf.zeros([batch, count, 4]))
        assert tuple(logits.shape) == (batch, count, 5)
        assert tuple(deltas.shape) == (batch, count, 1, 4)
    assert fn.experimental_get_tracing_count() == 1


def test_config_equals_constructor_kwargs_and_roundtrips():
    section = HeadConfig(
        channels=64,
        k=3,
        pooling_mode="bilinear",
        sampling_ratio=3,
        psroi_impl="tf",
        box_weights=[1.0, 1.0, 2.0, 2.0],
    )
    kwargs = dict(num_classes=20, config=section, feature_stride=16, init_stddev=0.02)
    head = RFCNHead(**kwargs)
    config = head.get_config()
    assert {key: config[key] for key in kwargs} == dict(kwargs, config=dataclasses.asdict(section))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(clone, RFCNHead) and clone.get_config() == config
    assert clone.config == section


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(num_classes=0), "num_classes must be >= 1, got 0"),
        (dict(num_classes=2, pooling_mode="max"), "'max'"),
        (dict(num_classes=2, psroi_impl="cuda"), "'cuda'"),
        (dict(num_classes=2, k=0), r"the PS grid must be >= 1 x 1, got \(0, 0\)"),
        (dict(num_classes=2, box_weights=[1.0]), "box_weights must have 4 values"),
    ],
)
def test_rejects_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        make_head(**bad)


def test_a_rectangular_grid_reaches_the_pooling_op(monkeypatch):
    """model.head.grid [kh, kw]: kh*kw bins per map and output_size=(kh, kw) passed through."""
    from rfcn_tf.ops import psroi_pool as op_module

    seen = {}

    def fake_pool(maps, rois, *, output_size, spatial_scale, mode, sampling_ratio, impl):
        seen.update(output_size=output_size, sampling_ratio=sampling_ratio)
        kh, kw = output_size
        depth = maps.shape[-1] // (kh * kw)
        return tf.zeros(tf.stack([tf.shape(rois)[0], kh, kw, depth]))

    monkeypatch.setattr(op_module, "ps_roi_pool", fake_pool)
    head = make_head(3, channels=4, grid=[3, 2], sampling_ratio=0, psroi_impl="tf")
    logits, deltas = head(tf.zeros([1, 4, 4, 6]), tf.constant([[[0.0, 0.0, 32.0, 32.0]]]))
    assert head.class_maps.filters == 3 * 2 * 4 and head.box_maps.filters == 3 * 2 * 4
    assert seen == {"output_size": (3, 2), "sampling_ratio": 0}
    assert tuple(logits.shape) == (1, 1, 4) and tuple(deltas.shape) == (1, 1, 1, 4)
