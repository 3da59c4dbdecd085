"""ONNX: the exported serving graph converts (opset 17) and onnxruntime on the CPU gives the
SavedModel's detections; the tf2onnx pitfalls we work around are pinned by small cases; an
unconvertible op is named."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from helpers.export_helpers import synthetic_image

from rfcn_tf.export.contract import ALL_OUTPUT_KEYS
from rfcn_tf.export.onnx import (
    OnnxComparison,
    OnnxConversionError,
    OnnxMismatchError,
    compare_detections,
    export_onnx,
    fix_loop_carried_types,
    onnx_session,
    run_onnx,
    verify_onnx,
)


@pytest.fixture(scope="module")
def onnx_path(exported, loaded, tmp_path_factory):
    return export_onnx(
        exported, output_path=tmp_path_factory.mktemp("onnx") / "model.onnx", loaded=loaded
    )


def test_model_contract(onnx_path):
    model = onnx.load(str(onnx_path))
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    assert inp.name == "input_tensor"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[3].dim_value == 3
    assert not any(d.dim_value for d in dims[:3])  # N, H, W dynamic
    assert sorted(o.name for o in model.graph.output) == sorted(ALL_OUTPUT_KEYS)


def test_batch_equals_the_savedmodel_batch(onnx_path, exported, loaded):
    """A batch of two images of one size: each row matches the SavedModel's row."""
    images = np.stack([synthetic_image(200, 260, seed=s) for s in (21, 22)])
    result = verify_onnx(onnx_path, exported, images=[images], atol=1e-3, loaded=loaded)
    assert result.detections > 0 and result.tie_swaps == 0


def test_same_detections_without_resize_rounding(onnx_path, exported, loaded, jpeg_image):
    """640x480 -> 320x240 (scale 1/2 exactly): TF and onnxruntime resize to the same uint8
    pixels, so the detections agree to float32 round-off (measured about 1e-6)."""
    if jpeg_image.shape[:2] != (480, 640):
        pytest.skip("needs the 640x480 BCCD image")
    result = verify_onnx(onnx_path, exported, images=[jpeg_image[None]], atol=1e-5, loaded=loaded)
    assert result.detections > 0 and result.tie_swaps == 0
    assert result.max_abs_diff < 1e-5


def test_same_detections_on_other_sizes(onnx_path, exported, loaded, jpeg_image):
    """Sizes whose resize scale is not exact: the float interpolation of TF and onnxruntime
    differs by ~1e-3 grey levels, so ~0.1-0.5 % of resized pixels round to the neighbouring
    uint8 value; scores and boxes then move by up to a few 1e-4 (the stated tolerance is
    1e-3)."""
    images = [
        jpeg_image[None, 37:400, 11:523],
        synthetic_image(150, 410, seed=5)[None],
        synthetic_image(333, 222, seed=6)[None],
    ]
    for image in images:  # real comparisons: each image yields detections
        out = loaded.signatures["serving_default"](input_tensor=tf.constant(image))
        assert out["num_detections"].numpy()[0] > 0
    result = verify_onnx(onnx_path, exported, images=images, atol=1e-3, loaded=loaded)
    assert result.detections > 0 and result.tie_swaps == 0
    assert result.max_abs_diff < 1e-3


def test_verify_reports_a_mismatch(onnx_path, loaded, jpeg_image):
    session = onnx_session(onnx_path)
    image = jpeg_image[None, :300, :300]
    actual = run_onnx(session, image)
    expected = {
        k: v.numpy()
        for k, v in loaded.signatures["serving_default"](input_tensor=tf.constant(image)).items()
    }
    result = compare_detections(expected, actual, atol=1e-3)
    n = int(expected["num_detections"][0])
    assert result.detections == n >= 8 and result.max_abs_diff < 1e-3
    # Every box moved, scores kept: not NMS ties but wrong boxes.
    moved = dict(actual, detection_boxes=actual["detection_boxes"] + 0.01)
    with pytest.raises(OnnxMismatchError, match=f"{n} of {n} detections match only by class"):
        compare_detections(expected, moved, atol=1e-3)
    # One box moved, its score kept: counted as a tie swap.
    one_moved = {k: v.copy() for k, v in actual.items()}
    one_moved["detection_boxes"][0, 3] += 0.05
    assert compare_detections(expected, one_moved, atol=1e-3).tie_swaps == 1
    # One score changed: no partner at all.
    rescored = {k: v.copy() for k, v in actual.items()}
    rescored["detection_scores"][0, 2] -= 0.01
    with pytest.raises(OnnxMismatchError, match="detection 2 .* has no ONNX match"):
        compare_detections(expected, rescored, atol=1e-3)
    fewer = dict(actual, num_detections=actual["num_detections"] - 1)
    with pytest.raises(OnnxMismatchError, match="num_detections"):
        compare_detections(expected, fewer, atol=1e-3)


def test_swapped_ties_still_match():
    base = {
        "detection_boxes": np.array([[[0, 0, 0.5, 0.5], [0.1, 0.1, 0.6, 0.6], [0, 0, 0, 0]]]),
        "detection_scores": np.array([[0.7, 0.7, 0.0]]),
        "detection_classes": np.array([[1.0, 1.0, 0.0]]),
        "num_detections": np.array([2.0]),
    }
    swapped = {k: v.copy() for k, v in base.items()}
    swapped["detection_boxes"][0, [0, 1]] = base["detection_boxes"][0, [1, 0]]
    assert compare_detections(base, swapped, atol=1e-6) == OnnxComparison(0.0, 2, 0)


# --------------------------------------------------------- tf2onnx pitfalls, pinned small


def _convert(function, specs):
    import tf2onnx

    from rfcn_tf.export.onnx import cast_resize_input_to_float, select_as_where

    proto, _ = tf2onnx.convert.from_function(
        function,
        input_signature=specs,
        opset=17,
        custom_rewriter=[select_as_where, cast_resize_input_to_float],
    )
    return proto


def test_resize_of_a_uint8_image_converts():
    """tf.image.resize on uint8 (float32 out) must not become an ONNX Resize with uint8 out."""
    specs = [tf.TensorSpec([None, None, 3], tf.uint8, name="x")]

    @tf.function(input_signature=specs)
    def resize(x):
        resized = tf.image.resize(x, [7, 9], method="bilinear")
        return {"float": resized, "uint8": tf.saturate_cast(tf.round(resized), tf.uint8)}

    proto = _convert(resize, specs)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {"x": x})))
    want = resize(tf.constant(x))
    assert got["float"].dtype == np.float32 and got["uint8"].dtype == np.uint8
    np.testing.assert_allclose(got["float"], want["float"].numpy(), atol=1e-3)


def test_where_with_infinite_branch_stays_exact():
    """tf.where(mask, x, -inf) must not become mask*x + (1-mask)*(-inf) (= NaN)."""
    specs = [tf.TensorSpec([None], tf.float32, name="x")]

    @tf.function(input_signature=specs)
    def masked(x):
        return tf.where(x > 0, x, tf.fill(tf.shape(x), -np.inf))

    proto = _convert(masked, specs)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.5, -2.0, 3.0], np.float32)
    (got,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(got, [1.5, -np.inf, 3.0])


def test_fix_loop_carried_types_casts_an_int64_initializer():
    """An ONNX Loop fed an int64 initializer where its body declares int32 (what tf2onnx 1.17
    emits for tf.map_fn over a constant-folded batch of one) gets a Cast and then runs."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["n_in", "one"], ["n_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("n_in", TensorProto.INT32, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("n_out", TensorProto.INT32, []),
        ],
        [helper.make_tensor("one", TensorProto.INT32, [], [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "trip"], ["n_final"], body=body)],
        "outer",
        [],
        [helper.make_tensor_value_info("n_final", TensorProto.INT32, [])],
        [
            helper.make_tensor("trip", TensorProto.INT64, [], [3]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Exception, match="mismatch|Type Error"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert fix_loop_carried_types(model) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (n_final,) = session.run(None, {})
    assert n_final == 6 and n_final.dtype == np.int32  # 3 + three iterations of +1


# ---------------------------------------------------------------------------- failures


def test_unconvertible_op_is_named(tmp_path):
    module = tf.Module()
    spec = tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")

    @tf.function(input_signature=[spec])
    def serve(input_tensor):
        png = tf.io.encode_png(input_tensor[0])  # no ONNX equivalent
        return {"num_detections": tf.cast(tf.strings.length(png), tf.float32)[None]}

    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": serve})
    with pytest.raises(OnnxConversionError, match="EncodePng") as info:
        export_onnx(tmp_path / "sm", output_path=tmp_path / "out.onnx")
    assert "EncodePng" in info.value.ops
    assert not (tmp_path / "out.onnx").exists()


def test_a_failing_tf2onnx_pass_is_retried_and_skipped_as_tf2onnx_does(tmp_path, monkeypatch):
    """export_onnx converts with tf2onnx's per-pass safety copies off; when that raises it
    converts again with them on, where tf2onnx skips the failing pass with a warning."""
    import os

    from tf2onnx import optimizer

    calls = []

    class FailingPass:
        graph_been_opt = False

        def optimize(self, graph, iteration):
            calls.append(os.environ.get("TF2ONNX_CATCH_ERRORS"))
            raise RuntimeError("this pass is broken")

    monkeypatch.delenv("TF2ONNX_CATCH_ERRORS", raising=False)
    monkeypatch.setitem(optimizer._optimizers, "failing_pass", FailingPass)
    module = tf.Module()
    spec = tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")

    @tf.function(input_signature=[spec])
    def serve(input_tensor):
        return {"num_detections": tf.reduce_sum(tf.cast(input_tensor, tf.float32))[None]}

    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": serve})
    path = export_onnx(tmp_path / "sm", output_path=tmp_path / "out.onnx")
    # tf2onnx's default (copies on) is the variable unset
    assert calls[0] == "FALSE" and calls[1:] and set(calls[1:]) == {None}, calls
    assert "TF2ONNX_CATCH_ERRORS" not in os.environ  # restored
    image = np.full((1, 2, 3, 3), 7, np.uint8)
    (total,) = onnx_session(path).run(None, {"input_tensor": image})
    np.testing.assert_allclose(total, [7.0 * 18])


def test_encoded_signature_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match="ONNX has no image decoder"):
        export_onnx(exported, output_path=tmp_path / "x.onnx", signature="serving_encoded")
    with pytest.raises(ValueError, match="has no signature 'nope'"):
        export_onnx(exported, output_path=tmp_path / "x.onnx", signature="nope")


def test_int8_quantized_model_loads_and_keeps_nms_fp32(onnx_path, exported, jpeg_image):
    """Static INT8: every Conv gets quantized weights (QDQ pairs around it), nothing else is
    quantized, the model runs in onnxruntime, and its detections cover fp32's on an image it
    was calibrated on (the tiny model has random weights, so only a loose overlap is
    expected; the reported number on a trained model is the check that matters)."""
    from rfcn_tf.export.onnx import detection_overlap, quantize_onnx_int8

    calibration = [synthetic_image(240, 320, seed=s)[None] for s in range(4)]
    int8_path = quantize_onnx_int8(
        onnx_path, output_path=onnx_path.parent / "int8.onnx", calibration_images=calibration
    )
    model = onnx.load(str(int8_path))
    ops = [node.op_type for node in model.graph.node]
    convs = ops.count("Conv")
    assert convs > 0 and ops.count("DequantizeLinear") >= 2 * convs  # weight + activation
    assert "QLinearConv" not in ops  # QDQ format: Conv stays a Conv fed by dequantized inputs
    activation_zero_points = [
        init.data_type
        for init in model.graph.initializer
        if init.name.endswith("_zero_point") and not init.dims  # per-tensor: activations
    ]
    assert activation_zero_points and set(activation_zero_points) == {onnx.TensorProto.UINT8}
    # What the speed rests on: onnxruntime fuses every DQ-Conv-Q into an integer QLinearConv
    # (with int8 activations it left most convolutions as fp32 Conv on dequantized inputs).
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(onnx_path.parent / "int8_optimized.onnx")
    ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == convs and "Conv" not in fused, sorted(set(fused))
    fp32, int8 = onnx_session(onnx_path), onnx_session(int8_path)
    out32 = run_onnx(fp32, calibration[0])
    out8 = run_onnx(int8, calibration[0])
    assert set(out8) == set(out32)
    mean_iou, matched, total = detection_overlap(out32, out8, min_score=0.3)
    assert total > 0 and matched >= total // 2 and mean_iou >= 0.5, (mean_iou, matched, total)


def _features(images, groundtruths):
    """One batch of the evaluator's features for same-sized uint8 [H, W, 3] images, no resize
    (image = original frame); ``groundtruths`` per image: (boxes [G, 4] pixels, classes [G])."""
    g = max(len(c) for _, c in groundtruths)
    boxes = np.zeros((len(images), g, 4), np.float32)
    classes = np.zeros((len(images), g), np.int32)
    mask = np.zeros((len(images), g), bool)
    for i, (b, c) in enumerate(groundtruths):
        boxes[i, : len(c)], classes[i, : len(c)], mask[i, : len(c)] = b, c, True
    shapes = np.array([image.shape[:2] for image in images], np.int32)
    return {
        "images": np.stack(images),
        "image_shapes": shapes,
        "original_shapes": shapes,
        "image_ids": np.arange(len(images), dtype=np.int64),
        "gt_boxes": boxes,
        "gt_classes": classes,
        "gt_mask": mask,
    }


def test_onnx_backend_evaluates_as_the_savedmodel(onnx_path, exported):
    """The onnxruntime adapter that ``--int8``'s accuracy report (and
    benchmarks/int8_accuracy.py) evaluates through: on the same images, its detections and
    the evaluator's AP equal the SavedModel backend's. The ground truth is every other
    SavedModel detection (so AP depends on the boxes' frame and the scores' order)."""
    from rfcn_tf.evaluation.evaluator import collect_detections, evaluate_detector
    from rfcn_tf.inference.backends import OnnxBackend, SavedModelBackend

    images = [synthetic_image(240, 320, seed=s) for s in (11, 12)]
    saved_model, ort_backend = SavedModelBackend(str(exported)), OnnxBackend(onnx_path)
    reference = saved_model.detect(images)
    truth = [(d["boxes"][::2], d["classes"][::2]) for d in reference]
    assert all(len(c) for _, c in truth)
    features = _features(images, truth)
    got = collect_detections(ort_backend.detect_fn(), [features], progress=False)[1]
    for ours, theirs in zip(got, reference):
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-2)  # pixels
        np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=1e-3)
        np.testing.assert_array_equal(ours["classes"], theirs["classes"])
    names = list(saved_model.class_names)
    metrics = [
        evaluate_detector(b.detect_fn(), [features], class_names=names, progress=False)
        for b in (saved_model, ort_backend)
    ]
    assert 0 < metrics[0]["voc07"]["mAP"] <= 1
    for key, metric in (("voc07", "mAP"), ("voc2010", "mAP"), ("coco", "AP")):
        assert abs(metrics[0][key][metric] - metrics[1][key][metric]) <= 1e-3, key


def test_int8_step_reports_the_accuracy_of_the_three_paths(onnx_path, exported, tiny_model):
    """``--int8``'s summary part: matched detections, speed-up, and mAP@0.5 and COCO AP of TF,
    fp32 and int8 onnxruntime on the first validation images of the config's split (shapes:
    generated, so no dataset is needed)."""
    import re

    from rfcn_tf.export.steps import int8_step

    config = tiny_model[0]
    part = int8_step(onnx_path, config, count=1, saved_model=exported, eval_images=2)
    number = r"(\d\.\d{3})"
    found = re.search(
        rf"mAP@0\.5 TF {number} / ORT fp32 {number} / int8 {number}, COCO AP {number} / "
        rf"{number} / {number} on 2 {config.eval.split or config.data.val_split} images",
        part,
    )
    assert found, part
    values = [float(v) for v in found.groups()]
    assert all(0 <= v <= 1 for v in values)
    # fp32 onnxruntime is the SavedModel (to 1e-4, test_batch_equals_the_savedmodel_batch),
    # so equal AP proves all three paths scored the same images (the split's order between
    # passes is not fixed: compare_accuracy reads it once).
    assert abs(values[0] - values[1]) <= 1e-3 and abs(values[3] - values[4]) <= 1e-3, part
    assert "fp32's speed" in part and "fp32 detections matched" in part


def test_int8_refuses_an_unknown_activation_type(onnx_path, tmp_path):
    from rfcn_tf.export.onnx import quantize_onnx_int8

    image = synthetic_image(240, 320, seed=0)[None]
    with pytest.raises(ValueError, match="activation_type must be one of"):
        quantize_onnx_int8(
            onnx_path,
            output_path=tmp_path / "x.onnx",
            calibration_images=[image],
            activation_type="uint4",
        )
