"""Class-specific box regression (model.head.class_agnostic_boxes: false): 4k^2 C box maps,
the loss regresses the target class's box, each class is decoded from its own box, and the
detector's outputs and its stock-op export keep the class-agnostic shapes and meaning."""

import keras
import numpy as np
import tensorflow as tf
from helpers.tiny_models import make_features, make_images, tiny_model

from rfcn_tf.model.losses import rfcn_per_roi_losses
from rfcn_tf.model.postprocess import postprocess_detections, raw_detections
from rfcn_tf.model.rfcn_head import RFCNHead
from rfcn_tf.model.sections import HeadConfig


def test_head_has_4k2c_box_maps_in_class_then_coordinate_order():
    k, num_classes = 2, 3
    head = RFCNHead(
        num_classes=num_classes,
        config=HeadConfig(channels=4, k=k, psroi_impl="tf", class_agnostic_boxes=False),
    )
    features = tf.zeros([1, 2, 2, 3])
    head.build(features.shape)
    assert head.box_maps.filters == 4 * k * k * num_classes
    head.reduce.kernel.assign(tf.zeros_like(head.reduce.kernel))
    head.reduce.bias.assign(tf.ones_like(head.reduce.bias))
    head.box_maps.kernel.assign(tf.zeros_like(head.box_maps.kernel))
    # bin-major: channel (bin * C + class) * 4 + coordinate; value 100*bin + 10*class + coord
    bias = np.array(
        [100 * b + 10 * c + j for b in range(k * k) for c in range(num_classes) for j in range(4)],
        np.float32,
    )
    head.box_maps.bias.assign(bias)
    _, deltas = head(features, tf.constant([[[0.0, 0.0, 32.0, 32.0]]]))
    assert tuple(deltas.shape) == (1, 1, num_classes, 4)
    mean_bin = 100 * np.mean(range(k * k))
    expected = [[mean_bin + 10 * c + j for j in range(4)] for c in range(num_classes)]
    np.testing.assert_allclose(deltas.numpy()[0, 0], expected, rtol=1e-6)


def test_loss_regresses_the_target_class_box_only():
    targets = {
        "roi_classes": tf.constant([[2, 0, 1]]),
        "foreground": tf.constant([[True, False, True]]),
        "box_targets": tf.constant([[[1.0, 2.0, 3.0, 4.0], [0.0] * 4, [-1.0, 0.5, 0.0, 2.0]]]),
    }
    logits = tf.zeros([1, 3, 3])
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(1, 3, 2, 4)).astype(np.float32) * 5
    deltas[0, 0, 1] = [1.0, 2.0, 3.0, 4.0]  # RoI 0, class 2: exact
    deltas[0, 2, 0] = [-1.0, 0.5, 0.0, 2.5]  # RoI 2, class 1: off by 0.5 in dw
    _, box = rfcn_per_roi_losses(logits, tf.constant(deltas), targets)
    np.testing.assert_allclose(box.numpy(), [[0.0, 0.0, 0.5 * 0.25]], atol=1e-6)


def test_each_class_is_decoded_from_its_own_box():
    rois = tf.constant([[[10.0, 10.0, 30.0, 30.0]]])
    probs = tf.constant([[[0.1, 0.5, 0.4]]])
    deltas = np.zeros((1, 1, 2, 4), np.float32)
    deltas[0, 0, 1] = [1.0, 0.0, 0.0, 0.0]  # class 2: dy 1 / 10 of the 20 px RoI = 2 px down
    out = postprocess_detections(
        rois,
        probs,
        tf.constant(deltas),
        tf.constant([[100, 100]]),
        tf.constant([[True]]),
        score_threshold=0.0,
    )
    assert int(out["num_detections"][0]) == 2
    np.testing.assert_array_equal(out["detection_classes"][0, :2], [1, 2])
    np.testing.assert_allclose(
        out["detection_boxes"][0, :2], [[10, 10, 30, 30], [12, 10, 32, 30]], atol=1e-4
    )
    boxes, _ = raw_detections(
        rois, probs, tf.constant(deltas), tf.constant([[100, 100]]), tf.constant([[True]])
    )
    np.testing.assert_allclose(boxes[0, 0], [10, 10, 30, 30], atol=1e-4)  # argmax class 1


def test_detector_outputs_keep_their_shapes_and_train():
    agnostic = tiny_model(seed=0)
    specific = tiny_model(seed=0, **{"head.class_agnostic_boxes": False})
    assert specific.rfcn_head.box_maps.filters == 3 * 3 * 4 * 3
    images, shapes = make_images(2, 64, 96), tf.constant([[64, 96], [48, 80]], tf.int32)
    a, b = agnostic.detect(images, shapes), specific.detect(images, shapes)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    out = specific({"images": images, "image_shapes": shapes})
    assert tuple(out["box_deltas"].shape) == (2, 20, 3, 4)
    with tf.GradientTape() as tape:
        losses = specific.compute_losses(make_features(), seed=1)
    grads = tape.gradient(losses["total_loss"], specific.rfcn_head.box_maps.trainable_weights)
    assert np.isfinite(float(losses["rfcn_box_loss"])) and all(np.any(g.numpy()) for g in grads)
    clone = type(specific).from_config(specific.get_config())
    assert clone.rfcn_head.config.class_agnostic_boxes is False


def test_stock_op_export_and_onnx_serve_the_same_detections(tmp_path):
    from rfcn_tf.export import saved_model as export
    from rfcn_tf.export.onnx import export_onnx, verify_onnx

    keras.utils.set_random_seed(0)
    model = tiny_model(seed=0, **{"head.class_agnostic_boxes": False, "head.psroi_impl": "tf"})
    images = make_images(1, 64, 64, seed=3)
    shapes = tf.constant([[64, 64]], tf.int32)
    expected = model.detect(images, shapes)
    folder = export.export_saved_model(
        model,
        class_names=["a", "b", "c"],
        out_dir=tmp_path,
        model_name="rfcn",
        version=1,
        min_size=64,
        max_size=64,
        verify=False,
        measure_batching=False,
    )
    ops = export.saved_model_op_types(folder)
    assert not any(op.startswith("Rfcn") for op in ops), sorted(op for op in ops if "Rfcn" in op)
    loaded = tf.saved_model.load(str(folder))
    served = loaded.signatures["serving_default"](input_tensor=images)
    n = int(expected["num_detections"][0])
    assert n > 0 and int(served["num_detections"][0]) == n
    np.testing.assert_allclose(
        served["detection_scores"][0, :n], expected["detection_scores"][0, :n], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(
        served["detection_classes"][0, :n].numpy().astype(int), expected["detection_classes"][0, :n]
    )
    np.testing.assert_allclose(
        served["detection_boxes"][0, :n] * 64.0, expected["detection_boxes"][0, :n], atol=1e-3
    )

    # ONNX (tf2onnx, opset 17): onnxruntime detects what the SavedModel does, per-class boxes too.
    onnx_path = export_onnx(folder, output_path=tmp_path / "model.onnx", loaded=loaded)
    result = verify_onnx(onnx_path, folder, images=[images.numpy()], atol=1e-3, loaded=loaded)
    assert result.detections == n
