"""The stock-op twins of the deformable ops convert to ONNX with tf2onnx (opset 17) and
onnxruntime reproduces them: the serving / ONNX path of a deformable model."""

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.ops.deform_conv_tf import deform_conv2d_tf
from rfcn_tf.ops.deform_psroi_pool_tf import deform_ps_roi_pool_tf

tf2onnx = pytest.importorskip("tf2onnx", reason="tf2onnx is the export extra")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the export extra")


def test_twins_convert_to_onnx_and_match():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 9, 11, 36)).astype(np.float32)
    rois = np.array([[0, 2, 3, 60, 80], [1, -10, 5, 40, 170]], np.float32)
    offsets = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    x = rng.standard_normal((1, 8, 9, 4)).astype(np.float32)
    conv_off = rng.standard_normal((1, 8, 9, 18)).astype(np.float32)
    mask = rng.uniform(0, 1, (1, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 36], name="maps"),
            tf.TensorSpec([None, 5], name="rois"),
            tf.TensorSpec([None, 3, 3, 2], name="offsets"),
            tf.TensorSpec([None, None, None, 4], name="x"),
            tf.TensorSpec([None, None, None, 18], name="conv_offsets"),
            tf.TensorSpec([None, None, None, 9], name="mask"),
        ]
    )
    def fn(m, r, o, x_, co, mk):
        pooled = deform_ps_roi_pool_tf(m, r, o, output_size=3, spatial_scale=1 / 16)
        conv = deform_conv2d_tf(x_, co, tf.constant(w), mask=mk, padding="SAME")
        return tf.identity(pooled, name="pooled"), tf.identity(conv, name="conv")

    model, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = {
        "maps": maps,
        "rois": rois,
        "offsets": offsets,
        "x": x,
        "conv_offsets": conv_off,
        "mask": mask,
    }
    feeds = {i.name: values[i.name.split(":")[0]] for i in session.get_inputs()}
    got = session.run(None, feeds)
    want = fn(maps, rois, offsets, x, conv_off, mask)
    for g, wv in zip(got, want):
        np.testing.assert_allclose(g, wv.numpy(), atol=1e-4, rtol=1e-4)
