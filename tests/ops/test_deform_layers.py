"""Keras layers of Deformable R-FCN (rfcn_tf/model/deformable.py): at initialization they are the
plain op (bilinear PS-RoI pooling, Conv2D), gradients reach their zero-initialized offset
branches, custom and stock-op paths agree, configs round-trip, and a SavedModel of the "tf"
path holds no custom op."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.model.deformable import DeformableConv2D, DeformablePSRoIPooling
from rfcn_tf.ops.psroi_pool import ps_roi_pool


def _pool_inputs(seed=0, k=3, depth=4, dim=6):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((2, 9, 11, k * k * depth)).astype(np.float32)
    hidden = rng.standard_normal((2, 9, 11, dim)).astype(np.float32)
    rois = np.array([[0, 2, 3, 60, 80], [1, -10, 5, 40, 170], [1, 30, 30, 130, 100]], np.float32)
    return maps, hidden, rois


@pytest.mark.parametrize("groups", [1, 4])
def test_pooling_layer_starts_as_bilinear_ps_roi_pool_and_learns_offsets(groups):
    maps, hidden, rois = _pool_inputs()
    layer = DeformablePSRoIPooling(output_size=3, spatial_scale=1 / 16, offset_groups=groups)
    out = layer(maps, hidden, rois)
    plain = ps_roi_pool(maps, rois, output_size=3, spatial_scale=1 / 16, mode="bilinear")
    np.testing.assert_allclose(out.numpy(), plain.numpy(), atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(maps, hidden, rois) ** 2)
    grads = tape.gradient(loss, layer.offset_conv.trainable_weights)
    assert all(g is not None for g in grads) and np.abs(grads[0].numpy()).max() > 1e-4
    layer.offset_conv.kernel.assign(tf.random.normal(layer.offset_conv.kernel.shape, seed=1))
    twin = DeformablePSRoIPooling.from_config({**layer.get_config(), "impl": "tf"})
    twin(maps, hidden, rois)
    twin.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        twin(maps, hidden, rois).numpy(), layer(maps, hidden, rois).numpy(), atol=1e-5
    )
    assert np.abs(layer(maps, hidden, rois).numpy() - plain.numpy()).max() > 1e-3


@pytest.mark.parametrize("modulated", [False, True])
def test_conv_layer_starts_as_conv2d_and_learns_offsets(modulated):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 10, 12, 5)).astype(np.float32)
    plain = keras.layers.Conv2D(7, 3, padding="same", dilation_rate=2)
    want = plain(x)
    layer = DeformableConv2D(7, 3, padding="same", dilation_rate=2, modulated=modulated)
    layer.build(x.shape)
    layer.set_conv_weights(*plain.get_weights())
    np.testing.assert_allclose(layer(x).numpy(), want.numpy(), atol=1e-5)
    assert layer.compute_output_shape(x.shape) == tuple(want.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None for g in grads)
    assert np.abs(tape_grad_of(layer, x, "offset_conv")).max() > 1e-4
    twin = DeformableConv2D.from_config({**layer.get_config(), "impl": "tf"})
    twin.build(x.shape)
    layer.offset_conv.kernel.assign(0.1 * tf.random.normal(layer.offset_conv.kernel.shape, seed=2))
    twin.set_weights(layer.get_weights())
    np.testing.assert_allclose(twin(x).numpy(), layer(x).numpy(), atol=1e-4, rtol=1e-5)


def tape_grad_of(layer, x, sublayer):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    return tape.gradient(loss, getattr(layer, sublayer).kernel).numpy()


def test_stock_op_savedmodel_has_no_custom_op(tmp_path):
    maps, hidden, rois = _pool_inputs()
    pool = DeformablePSRoIPooling(output_size=3, impl="tf")
    conv = DeformableConv2D(4, 3, modulated=True, impl="tf")
    pool(maps, hidden, rois)
    conv(hidden)

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.conv = pool, conv

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, 36]),
                tf.TensorSpec([None, None, None, 6]),
                tf.TensorSpec([None, 5]),
            ]
        )
        def __call__(self, m, h, r):
            return self.pool(m, h, r), self.conv(h)

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "sm"))
    graph = module.__call__.get_concrete_function().graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for fn in graph.library.function:
        ops |= {node.op for node in fn.node_def}
    assert not [op for op in ops if op.startswith("Rfcn")], ops
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    out = loaded(maps, hidden, rois)
    np.testing.assert_allclose(out[0].numpy(), module(maps, hidden, rois)[0].numpy(), atol=1e-6)
