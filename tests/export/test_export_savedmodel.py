"""The SavedModel export: layout, signatures, known answers, equality with the in-Python model,
stock ops in a fresh process, TensorFlow's own saved_model_cli, versions, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers.export_helpers import (
    CLASS_NAMES,
    STANDIN_BOXES,
    STANDIN_MULTICLASS,
    assert_outputs_close,
    reference_outputs,
    synthetic_image,
)

from rfcn_tf.export import saved_model as saved_model_mod
from rfcn_tf.export.contract import ALL_OUTPUT_KEYS, SIGNATURES
from rfcn_tf.export.saved_model import (
    ExportError,
    export_saved_model,
    list_versions,
    next_version,
    saved_model_op_types,
    verify_export,
)

OUTPUTS = {
    "detection_boxes": (tf.float32, 3),
    "detection_scores": (tf.float32, 2),
    "detection_classes": (tf.float32, 2),
    "num_detections": (tf.float32, 1),
    "detection_multiclass_scores": (tf.float32, 3),
    "detection_anchor_indices": (tf.float32, 2),
    "raw_detection_boxes": (tf.float32, 3),
    "raw_detection_scores": (tf.float32, 3),
}
INPUTS = {
    "serving_default": {"input_tensor": (tf.uint8, [None, None, None, 3])},
    "serving_encoded": {"encoded_image_string_tensor": (tf.string, [None])},
    "tf_example": {"tf_example": (tf.string, [None])},
    "serving_custom": {
        "input_tensor": (tf.uint8, [None, None, None, 3]),
        "score_threshold": (tf.float32, []),
        "iou_threshold": (tf.float32, []),
        "max_detections": (tf.int32, []),
    },
}


# ------------------------------------------------------------------------------ layout, API


def test_layout_and_assets(exported):
    assert exported.name == "1" and exported.parent.name == "rfcn"
    assert (exported / "saved_model.pb").is_file()
    assert (exported / "variables").is_dir()
    assert (exported / "assets" / "labels.txt").read_text().splitlines() == CLASS_NAMES
    info = json.loads((exported / "assets" / "export.json").read_text())
    assert info["postprocess"] == {
        "score_threshold": 0.05,
        "iou_threshold": 0.3,
        "max_detections": 30,
    }
    assert info["resize"]["min_size"] == 256 and info["num_classes"] == 3
    # The staging folder is gone: TF Serving sees only complete numeric versions; the
    # batching parameters sit beside them (unmeasured: this export skipped verification).
    assert sorted(p.name for p in exported.parent.iterdir()) == ["1", "batching_parameters.txt"]
    text = (exported.parent / "batching_parameters.txt").read_text()
    assert "not measured" in text and "max_batch_size { value: 8 }" in text


def test_signatures_inputs_and_outputs(loaded):
    assert set(loaded.signatures) == set(SIGNATURES) == set(INPUTS)
    for key, inputs in INPUTS.items():
        _, specs = loaded.signatures[key].structured_input_signature
        assert {
            name: (spec.dtype, spec.shape.as_list()) for name, spec in specs.items()
        } == inputs, key
        outputs = loaded.signatures[key].structured_outputs
        assert set(outputs) == set(OUTPUTS) == set(ALL_OUTPUT_KEYS)
        for name, (dtype, rank) in OUTPUTS.items():
            assert outputs[name].dtype == dtype, (key, name)
            assert outputs[name].shape.rank == rank, (key, name, outputs[name].shape)


@pytest.mark.parametrize("height,width", [(40, 60), (200, 90), (333, 97)])
def test_standin_known_answer(standin_export, height, width):
    """Boxes are the model's resized-image pixels divided by the resized size: the stand-in's
    fixed fractions of (h, w) come out exactly, whatever the resize did; classes and counts are
    float32; padding rows stay zero."""
    loaded = tf.saved_model.load(str(standin_export))
    image = synthetic_image(height, width)
    out = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    np.testing.assert_allclose(out["detection_boxes"].numpy()[0], STANDIN_BOXES, atol=1e-6)
    np.testing.assert_allclose(out["detection_scores"].numpy(), [[0.9, 0.5, 0, 0]], atol=1e-7)
    np.testing.assert_array_equal(out["detection_classes"].numpy(), [[2.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(out["num_detections"].numpy(), [2.0])
    # The OD API's extra outputs: the source RoI of each detection and its full softmax,
    # and every RoI before NMS (the two invalid ones zero).
    np.testing.assert_allclose(
        out["detection_multiclass_scores"].numpy()[0], STANDIN_MULTICLASS, atol=1e-7
    )
    np.testing.assert_array_equal(out["detection_anchor_indices"].numpy(), [[0, 1, 0, 0]])
    np.testing.assert_allclose(out["raw_detection_boxes"].numpy()[0], STANDIN_BOXES, atol=1e-6)
    np.testing.assert_allclose(
        out["raw_detection_scores"].numpy()[0], STANDIN_MULTICLASS, atol=1e-7
    )
    assert (standin_export / "assets" / "labels.txt").read_text() == "cat\ndog\n"


def test_standin_encoded_png_equals_pixels(standin_export):
    loaded = tf.saved_model.load(str(standin_export))
    image = synthetic_image(50, 70)
    png = tf.io.encode_png(image).numpy()
    a = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    b = loaded.signatures["serving_encoded"](encoded_image_string_tensor=tf.constant([png]))
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


# ------------------------------------------------------------------- equality with Python


def test_signature_equals_in_python_model(tiny_model, loaded, jpeg_image):
    """Both signatures (in this process) give the in-Python model's detections to 1e-4."""
    _, model = tiny_model
    expected = reference_outputs(model, jpeg_image)
    assert expected["num_detections"][0] > 0  # a real comparison, not of empty outputs
    got = loaded.signatures["serving_default"](input_tensor=tf.constant(jpeg_image[None]))
    assert_outputs_close({k: v.numpy() for k, v in got.items()}, expected, atol=1e-4)


def test_signature_equals_in_python_model_on_odd_sizes(tiny_model, loaded):
    _, model = tiny_model
    for seed, (h, w) in enumerate([(123, 457), (501, 77)]):
        image = synthetic_image(h, w, seed=seed)
        got = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
        assert_outputs_close(
            {k: v.numpy() for k, v in got.items()}, reference_outputs(model, image), atol=1e-4
        )


# Runs in a fresh interpreter without rfcn_tf on its path; written independently of
# rfcn_tf.export's own check.
FRESH_PROCESS_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    export_dir, jpeg_path, out_path = sys.argv[1:4]
    proto = saved_model_pb2.SavedModel()
    with open(export_dir + "/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    ops, functions = set(), 0
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            functions += 1
            ops.update(node.op for node in function.node_def)
    missing = sorted(op for op in ops if op_def_registry.get(op) is None)

    loaded = tf.saved_model.load(export_dir)
    jpeg = open(jpeg_path, "rb").read()
    image = tf.io.decode_image(jpeg, channels=3, expand_animations=False)
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg]))}))
    calls = {
        "image": ("serving_default", {"input_tensor": image[None]}),
        "encoded": ("serving_encoded", {"encoded_image_string_tensor": tf.constant([jpeg])}),
        "example": ("tf_example", {"tf_example": tf.constant([example.SerializeToString()])}),
        "custom": ("serving_custom", {"input_tensor": image[None],
                                      "score_threshold": tf.constant(0.05),
                                      "iou_threshold": tf.constant(0.3),
                                      "max_detections": tf.constant(30)}),
    }
    arrays = {}
    for prefix, (key, kwargs) in calls.items():
        arrays.update({f"{prefix}_{k}": v.numpy()
                       for k, v in loaded.signatures[key](**kwargs).items()})
    np.savez(out_path, **arrays)
    print(json.dumps({"ops": sorted(ops), "missing": missing, "functions": functions,
                      "rfcn_tf_imported": any(m.split(".")[0] == "rfcn_tf" for m in sys.modules)}))
""")


def _fresh_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    return env


def test_fresh_process_stock_ops_and_every_signature(
    tiny_model, exported, jpeg_bytes, jpeg_image, tmp_path
):
    jpeg_path = tmp_path / "image.jpg"
    jpeg_path.write_bytes(jpeg_bytes)
    out_path = tmp_path / "outputs.npz"
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECK, str(exported), str(jpeg_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_fresh_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rfcn_tf_imported"] is False
    assert report["functions"] > 0  # the op list covers the function library, not just nodes
    assert report["missing"] == [], f"non-stock ops in the export: {report['missing']}"
    # What the pure-TF PS-RoI pooling and the serving graph bring in, as a sanity check.
    assert {"ResizeBilinear", "DecodeImage", "EnsureShape", "Conv2D"} <= set(report["ops"])
    assert not any(op.startswith("Rfcn") for op in report["ops"])

    expected = reference_outputs(tiny_model[1], jpeg_image)
    outputs = np.load(out_path)
    for prefix in ("image_", "encoded_", "example_", "custom_"):
        got = {k[len(prefix) :]: outputs[k] for k in outputs.files if k.startswith(prefix)}
        assert set(got) == set(ALL_OUTPUT_KEYS), prefix
        assert_outputs_close(got, expected, atol=1e-4)


def test_op_listing_includes_function_library(exported):
    ops = saved_model_op_types(exported)
    # Top-level nodes of a TF2 SavedModel are mostly calls; the model's ops live in functions.
    assert {"StatefulPartitionedCall", "ResizeBilinear", "Conv2D"} <= ops


def test_verify_export_names_a_non_stock_op(standin_export, tmp_path):
    """A graph with an op stock TF lacks (here: the custom PS-RoI op's name patched into a
    copy) fails verification with the op named."""
    from tensorflow.core.protobuf import saved_model_pb2

    copy = tmp_path / "patched"
    shutil.copytree(standin_export, copy)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((copy / "saved_model.pb").read_bytes())
    patched = False
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "Mean":
                node.op = "RfcnPsRoiPool"
                patched = True
    assert patched
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(ExportError, match=r"RfcnPsRoiPool.*psroi_impl='tf'"):
        verify_export(copy)


# ------------------------------------------------------------------------- saved_model_cli


def _saved_model_cli() -> str:
    path = Path(sys.executable).parent / "saved_model_cli"
    assert path.is_file(), f"saved_model_cli not found next to {sys.executable}"
    return str(path)


def test_saved_model_cli_show_all(exported):
    proc = subprocess.run(
        [_saved_model_cli(), "show", "--dir", str(exported), "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_fresh_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for expected in (
        [
            "inputs['input_tensor'] tensor_info:",
            "dtype: DT_UINT8",
            "shape: (-1, -1, -1, 3)",
            "inputs['encoded_image_string_tensor']",
            "inputs['tf_example']",
            "inputs['score_threshold']",
            "dtype: DT_STRING",
            "shape: (-1)",
        ]
        + [f"signature_def['{key}']" for key in SIGNATURES]
        + [f"outputs['{name}']" for name in ALL_OUTPUT_KEYS]
    ):
        assert expected in text, f"{expected!r} missing from saved_model_cli show --all"


# `saved_model_cli run` for several signatures in one fresh process: the module's own run path
# (the inputs parsed from the same --inputs / --input_exprs strings, then the TF1 session
# loader, as TF Serving loads the model), which is what each `saved_model_cli run` command
# executes; one process instead of one per signature (the binary itself: the test above).
_SAVED_MODEL_CLI_RUNS = """
import json, sys
from tensorflow.python.tools import saved_model_cli as cli
export_dir, runs = sys.argv[1], json.loads(sys.argv[2])
for key, (inputs, input_exprs, outdir) in runs.items():
    feed = cli.load_inputs_from_input_arg_string(inputs, input_exprs, "")
    cli.run_saved_model_with_feed_dict(export_dir, "serve", key, feed, outdir, False)
    print("ran", key, flush=True)
"""


def test_saved_model_cli_run_on_every_signature(tiny_model, exported, tmp_path):
    """TensorFlow's own TF1-style runner (as TF Serving loads the model) on each signature:
    every one gives the in-Python model's detections for the same image."""
    image = synthetic_image(180, 260, seed=3)
    png = tf.io.encode_png(image).numpy()
    example = tf.train.Example(
        features=tf.train.Features(
            feature={"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
        )
    )
    np.save(tmp_path / "image.npy", image[None])
    np.save(tmp_path / "png.npy", np.array([png], dtype=bytes))
    np.save(tmp_path / "example.npy", np.array([example.SerializeToString()], dtype=bytes))
    runs = {  # key: (--inputs, --input_exprs, --outdir)
        "serving_default": (f"input_tensor={tmp_path}/image.npy", ""),
        "serving_encoded": (f"encoded_image_string_tensor={tmp_path}/png.npy", ""),
        "tf_example": (f"tf_example={tmp_path}/example.npy", ""),
        "serving_custom": (
            f"input_tensor={tmp_path}/image.npy",
            "score_threshold=0.05;iou_threshold=0.3;max_detections=30",
        ),
    }
    runs = {key: [*args, str(tmp_path / key)] for key, args in runs.items()}
    expected = reference_outputs(tiny_model[1], image)
    assert expected["num_detections"][0] > 0
    proc = subprocess.run(
        [sys.executable, "-c", _SAVED_MODEL_CLI_RUNS, str(exported), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_fresh_env(),
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [line for line in proc.stdout.splitlines() if line.startswith("ran ")]
    assert ran == [f"ran {key}" for key in runs], proc.stdout[-2000:]
    for key in runs:
        got = {name: np.load(tmp_path / key / f"{name}.npy") for name in ALL_OUTPUT_KEYS}
        assert_outputs_close(got, expected, atol=1e-4)


# ---------------------------------------------------------------------------------- versions


def test_versions_next_free_and_never_overwritten(tmp_path):
    from helpers.export_helpers import StandInDetector

    base = tmp_path / "m"
    assert next_version(base) == 1 and list_versions(base) == []
    first = export_saved_model(
        StandInDetector(),
        class_names=["a"],
        out_dir=tmp_path,
        model_name="m",
        min_size=32,
        max_size=32,
        verify=False,
    )
    (base / "notes").mkdir()  # non-numeric folders are ignored, as TF Serving does
    explicit = export_saved_model(
        StandInDetector(),
        class_names=["a"],
        out_dir=tmp_path,
        model_name="m",
        version=7,
        min_size=32,
        max_size=32,
        verify=False,
    )
    after = export_saved_model(
        StandInDetector(),
        class_names=["a"],
        out_dir=tmp_path,
        model_name="m",
        min_size=32,
        max_size=32,
        verify=False,
    )
    assert (first.name, explicit.name, after.name) == ("1", "7", "8")
    assert list_versions(base) == [1, 7, 8]
    with pytest.raises(ExportError, match=r"m/7 already exists.*next free: 9"):
        export_saved_model(
            StandInDetector(),
            class_names=["a"],
            out_dir=tmp_path,
            model_name="m",
            version=7,
            min_size=32,
            max_size=32,
            verify=False,
        )
    assert not [p for p in base.iterdir() if p.name.startswith(".tmp")]


def test_failed_verification_leaves_no_version(tmp_path, monkeypatch):
    from helpers.export_helpers import StandInDetector

    def fail(path, **kwargs):
        raise ExportError(f"simulated failure of {path}")

    monkeypatch.setattr(saved_model_mod, "verify_export", fail)
    with pytest.raises(ExportError, match="simulated failure"):
        export_saved_model(
            StandInDetector(),
            class_names=["a"],
            out_dir=tmp_path,
            model_name="m",
            min_size=32,
            max_size=32,
            verify=True,
        )
    assert list(Path(tmp_path, "m").iterdir()) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"class_names": []}, "class_names is empty"),
        ({"class_names": ["a", "b\nc"]}, r"class_names\[1\]"),
        ({"class_names": ["a", ""]}, r"class_names\[1\]"),
        ({"model_name": "a/b"}, "model_name must be a plain folder name"),
        ({"version": 0}, "version must be a positive integer"),
        ({"min_size": 0}, "need 1 <= min_size <= max_size"),
        ({"min_size": 64, "max_size": 32}, "need 1 <= min_size <= max_size"),
    ],
)
def test_export_argument_errors(tmp_path, kwargs, match):
    from helpers.export_helpers import StandInDetector

    args = dict(
        class_names=["a"], out_dir=tmp_path, model_name="m", min_size=32, max_size=32, verify=False
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        export_saved_model(StandInDetector(), **args)


# ------------------------------------------------------------------------------- bad input


def test_wrong_dtype_rejected_by_tensorflow(loaded):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="uint8"):
        loaded.signatures["serving_default"](input_tensor=tf.zeros([1, 8, 8, 3], tf.float32))


@pytest.mark.parametrize("shape", [[8, 8, 3], [1, 8, 8, 4], [1, 8, 8, 1]])
def test_wrong_shape_rejected_before_any_kernel(loaded, shape):
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"not compatible with expected shape \[\?,\?,\?,3\]"
    ):
        loaded.signatures["serving_default"](input_tensor=tf.zeros(shape, tf.uint8))


def test_empty_image_rejected(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="height and width >= 1"):
        loaded.signatures["serving_default"](input_tensor=tf.zeros([1, 0, 5, 3], tf.uint8))


@pytest.mark.parametrize(
    "key,inputs",
    [
        ("serving_default", {"input_tensor": tf.zeros([0, 8, 8, 3], tf.uint8)}),
        ("serving_encoded", {"encoded_image_string_tensor": tf.zeros([0], tf.string)}),
        ("tf_example", {"tf_example": tf.zeros([0], tf.string)}),
    ],
)
def test_empty_batch_rejected(standin_export, key, inputs):
    loaded = tf.saved_model.load(str(standin_export))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"holds no image \(batch size 0\)"):
        loaded.signatures[key](**inputs)


def test_tf_example_without_image_encoded_is_named(standin_export):
    loaded = tf.saved_model.load(str(standin_export))
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"]))
            }
        )
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="image/encoded"):
        loaded.signatures["tf_example"](tf_example=tf.constant([example.SerializeToString()]))


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("score_threshold", -0.1, "score_threshold must be >= 0"),
        ("iou_threshold", 1.5, r"iou_threshold must be in \[0, 1\]"),
        ("max_detections", 0, "max_detections must be >= 1"),
    ],
)
def test_custom_bad_parameters_rejected(standin_export, name, value, match):
    loaded = tf.saved_model.load(str(standin_export))
    args = {
        "score_threshold": tf.constant(0.05),
        "iou_threshold": tf.constant(0.3),
        "max_detections": tf.constant(4),
    }
    args[name] = tf.constant(value, args[name].dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        loaded.signatures["serving_custom"](input_tensor=tf.zeros([1, 8, 8, 3], tf.uint8), **args)


@pytest.mark.parametrize("data", [b"definitely not an image", b"", b"\x00" * 64])
def test_non_image_bytes_rejected(loaded, data):
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="is not a JPEG, PNG, GIF, BMP or WebP file"
    ):
        loaded.signatures["serving_encoded"](encoded_image_string_tensor=tf.constant([data]))


def test_truncated_jpeg_is_an_invalid_argument(loaded, jpeg_bytes):
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_encoded"](
            encoded_image_string_tensor=tf.constant([jpeg_bytes[:300]])
        )


def test_grayscale_and_rgba_png_become_rgb(standin_export):
    loaded = tf.saved_model.load(str(standin_export))
    gray = tf.io.encode_png(np.full((30, 40, 1), 128, np.uint8)).numpy()
    rgba = tf.io.encode_png(np.full((30, 40, 4), 200, np.uint8)).numpy()
    for data in (gray, rgba):
        out = loaded.signatures["serving_encoded"](encoded_image_string_tensor=tf.constant([data]))
        np.testing.assert_allclose(out["detection_boxes"].numpy()[0], STANDIN_BOXES, atol=1e-6)
