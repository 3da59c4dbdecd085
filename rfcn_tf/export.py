"""Export a trained R-FCN detector as a SavedModel for TF Serving (``python -m rfcn_tf.export``).

Layout (DESIGN.md, "Export"; TF Serving's): ``<out_dir>/<model_name>/<version>/`` holding
``saved_model.pb``, ``variables/`` and ``assets/labels.txt``. The version is the next free
integer by default; a version is written under a hidden temporary name and renamed into place
only once it is complete and verified, so a server polling the folder never loads half a model.

Signatures (TF Object Detection API names):

- ``serving_default``: ``input_tensor`` uint8 [1, H, W, 3] RGB, any H, W >= 1.
- ``serving_encoded``: ``encoded_image_string_tensor`` string [1], the bytes of one JPEG, PNG,
  GIF (first frame) or BMP file (REST clients send ``{"b64": ...}``); decoded to RGB.
- Outputs of both:
  ``detection_boxes`` float32 [1, M, 4]: yxyx normalized to [0, 1] w.r.t. the ORIGINAL image
  (pixel boxes of the resized image divided by the resized height/width: the resize keeps the
  aspect ratio, so this is the original image's frame up to the rounding of the resized size);
  ``detection_scores`` float32 [1, M]; ``detection_classes`` float32 [1, M] in 1..C
  (``labels.txt`` line i names class i); ``num_detections`` float32 [1] (float like the TF OD
  API); rows from ``num_detections`` to M are zero. M is the model's ``max_detections``.

Inside the graph, per image (R-FCN sec. 3, single-scale testing): ``resize_image`` (the same
function training and evaluation use: shorter side ``min_size``, longer side at most
``max_size``), zero-pad bottom/right to a multiple of 16, ``RFCN.detect``, normalize. The model
must be built with ``psroi_impl="tf"`` so the graph holds stock TensorFlow ops only; the export
checks that in a fresh Python process that never imports rfcn_tf (a process that loaded the
custom op library would count its op as registered).

Bad input: a wrong dtype fails TensorFlow's own signature type check; a wrong rank or channel
count fails an ``EnsureShape`` op (InvalidArgument naming the shapes) before any kernel runs;
an empty image and a string that is not an image file fail InvalidArgument assertions that say
so.

Shape shorthand: H/W original image, h/w resized image, Hp/Wp padded image, M max detections,
C classes without background.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import tensorflow as tf

from rfcn_tf.cli_args import add_config_arguments

SIGNATURE_IMAGE = "serving_default"
SIGNATURE_ENCODED = "serving_encoded"
INPUT_IMAGE = "input_tensor"
INPUT_ENCODED = "encoded_image_string_tensor"
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
LABELS_FILENAME = "labels.txt"
SIZE_MULTIPLE = 16  # pad to the backbone stride (INTERFACES.md: pad_to_multiple)

# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
          (b"BM", "BMP"))


class ExportError(RuntimeError):
    """An export that cannot be written or does not pass its checks."""


# --------------------------------------------------------------------------------------------
# The serving graph


class DetectorServingModule(tf.Module):
    """The two serving signatures around a detector (module docstring).

    Args:
      model: an object with ``detect(images uint8 [1, Hp, Wp, 3], image_shapes int32 [1, 2])``
        returning ``detection_boxes`` float32 [1, M, 4] yxyx pixels of the resized image,
        ``detection_scores`` [1, M], ``detection_classes`` int [1, M] in 1..C and
        ``num_detections`` int [1] (``RFCN.detect``, INTERFACES.md). Its variables are saved.
      min_size: shorter side of the resized image, pixels (``evaluation_scale(data.scales)``).
      max_size: cap on the longer side of the resized image, pixels (``data.max_size``).
      size_multiple: the padded image's sides are multiples of this (the feature stride).
      labels_path: a text file with one class name per line, saved as the asset labels.txt.

    Attributes:
      captured_variables: the tf.Variables the signatures read (what the SavedModel saves).
      serve_images: tf.function, ``input_tensor`` uint8 [1, H, W, 3] -> outputs dict.
      serve_encoded: tf.function, ``encoded_image_string_tensor`` string [1] -> outputs dict.
    """

    def __init__(self, model: Any, *, min_size: int, max_size: int,
                 size_multiple: int = SIZE_MULTIPLE, labels_path: Optional[str] = None):
        super().__init__(name="rfcn_serving")
        if min_size < 1 or max_size < min_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, "
                             f"max_size={max_size}")
        if size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
        # The model is not tracked as an attribute: see `captured_variables` below. Its
        # un-decorated detect (RFCN.detect_raw) embeds without a nested function call.
        self._detect = getattr(model, "detect_raw", None) or model.detect
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.size_multiple = int(size_multiple)
        if labels_path is not None:
            self.labels = tf.saved_model.Asset(labels_path)
        self.serve_images = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name=INPUT_IMAGE)])
        self.serve_encoded = tf.function(
            self._serve_encoded,
            input_signature=[tf.TensorSpec([1], tf.string, name=INPUT_ENCODED)])
        self._concrete = {SIGNATURE_IMAGE: self.serve_images.get_concrete_function(),
                          SIGNATURE_ENCODED: self.serve_encoded.get_concrete_function()}
        # Track exactly the tf.Variables the signatures capture (as Keras' own ExportArchive
        # does). Tracking the Keras model instead saves each Keras 3 variable as a second
        # resource: TF2's loader remaps captures to it, but TF1-style loaders (TF Serving,
        # saved_model_cli run) restore that copy and leave the captured ones uninitialized.
        seen: set[int] = set()
        captured = []
        for function in self._concrete.values():
            for variable in function.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    captured.append(variable)
        self.captured_variables = captured

    def signatures(self) -> dict[str, Any]:
        """Signature key -> concrete function, for ``tf.saved_model.save``."""
        return dict(self._concrete)

    def _serve_images(self, input_tensor):
        # EnsureShape checks at run time: the signature's static shape is not checked by TF
        # Serving's C++ session, and a wrong rank would otherwise reach the kernels.
        images = tf.ensure_shape(input_tensor, [1, None, None, 3])
        return self._detect_one(images[0])

    def _serve_encoded(self, encoded_image_string_tensor):
        data = encoded_image_string_tensor[0]
        head = tf.strings.substr(data, 0, 8)
        is_image = tf.reduce_any(tf.stack(
            [tf.equal(tf.strings.substr(head, 0, len(magic)), magic) for magic, _ in _MAGIC]))
        check = tf.debugging.Assert(is_image, [
            f"{INPUT_ENCODED}[0] is not a JPEG, PNG, GIF or BMP file; its length in bytes "
            "and first bytes are:", tf.strings.length(data), head], summarize=8)
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False)
        return self._detect_one(tf.ensure_shape(image, [None, None, 3]))

    def _detect_one(self, image):
        """uint8 [H, W, 3] -> the signature's outputs (batch of one)."""
        from rfcn_tf.data.transforms import pad_to_multiple, resize_image

        shape = tf.shape(image)
        check = tf.debugging.Assert(tf.reduce_all(shape[:2] >= 1), [
            "the image must have height and width >= 1; its shape [H, W, 3] is:", shape])
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        resized, _ = resize_image(image, min_size=self.min_size, max_size=self.max_size)
        resized_hw = tf.shape(resized)[:2]
        padded = pad_to_multiple(resized, multiple=self.size_multiple)
        outputs = self._detect(padded[None], tf.cast(resized_hw, tf.int32)[None])
        hw = tf.cast(resized_hw, tf.float32)
        scale = tf.concat([hw, hw], axis=0)  # (h, w, h, w) for yxyx
        boxes = tf.cast(outputs["detection_boxes"], tf.float32) / scale
        return {
            "detection_boxes": tf.clip_by_value(boxes, 0.0, 1.0),
            "detection_scores": tf.cast(outputs["detection_scores"], tf.float32),
            "detection_classes": tf.cast(outputs["detection_classes"], tf.float32),
            "num_detections": tf.cast(outputs["num_detections"], tf.float32),
        }


# --------------------------------------------------------------------------------------------
# Versions, labels, checks


def list_versions(model_base: os.PathLike) -> list[int]:
    """Numeric version folders under ``model_base`` (TF Serving's model base path), sorted."""
    base = Path(model_base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_base: os.PathLike) -> int:
    """One more than the largest numeric version under ``model_base``; 1 for a new model."""
    versions = list_versions(model_base)
    return versions[-1] + 1 if versions else 1


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty: the export needs one name per class 1..C")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"class_names[{index}] = {name!r}: names must be non-empty "
                             "single-line strings (labels.txt has one per line)")
    return names


def saved_model_op_types(export_dir: os.PathLike) -> set[str]:
    """Every op type in a SavedModel: its graphs' nodes and their function libraries'."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


# Runs in a fresh interpreter that never imports rfcn_tf: every op type must be registered in
# stock TensorFlow, and both signatures must run on a small generated image.
_VERIFY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry
    from tensorflow.core.protobuf import saved_model_pb2
    path = sys.argv[1]
    proto = saved_model_pb2.SavedModel()
    with open(path + "/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for mg in proto.meta_graphs:
        ops.update(n.op for n in mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            ops.update(n.op for n in fn.node_def)
    unknown = sorted(op for op in ops if op_def_registry.get(op) is None)
    result = {"num_op_types": len(ops), "non_stock_ops": unknown, "modules": [
        m for m in sys.modules if m == "rfcn_tf" or m.startswith("rfcn_tf.")]}
    if not unknown:
        loaded = tf.saved_model.load(path)
        image = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
        out = loaded.signatures["%(image)s"](**{"%(input_image)s": tf.constant(image)})
        png = tf.io.encode_png(image[0])
        out2 = loaded.signatures["%(encoded)s"](**{"%(input_encoded)s": tf.reshape(png, [1])})
        result["outputs"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in out.items()}
        result["same_on_png"] = bool(all(
            np.allclose(out[k].numpy(), out2[k].numpy(), atol=1e-4) for k in out))
    print("VERIFY " + json.dumps(result))
""") % {"image": SIGNATURE_IMAGE, "encoded": SIGNATURE_ENCODED, "input_image": INPUT_IMAGE,
        "input_encoded": INPUT_ENCODED}


def verify_export(export_dir: os.PathLike, *, timeout_s: float = 600.0) -> dict[str, Any]:
    """Checks a SavedModel in a fresh Python process that does not import rfcn_tf.

    Checks: every op type of the graph and its function library is registered in stock
    TensorFlow; ``serving_default`` runs on a 48x64 generated image and returns the four
    outputs; ``serving_encoded`` returns the same detections (to 1e-4) for its PNG encoding.

    Returns:
      ``{"num_op_types": int, "outputs": {name: [dtype, shape]}}``.

    Raises:
      ExportError: naming the non-stock ops, the failing signature or the process's error.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env.pop("PYTHONPATH", None)  # the check must not see this checkout's packages
    try:
        # Absolute: the check runs in another working directory.
        proc = subprocess.run([sys.executable, "-c", _VERIFY_SCRIPT, str(Path(export_dir).resolve())],
                              capture_output=True, text=True, timeout=timeout_s, env=env,
                              cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"verifying {export_dir} took over {timeout_s} s") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("VERIFY ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ExportError(f"the exported model at {export_dir} failed to load or run in a "
                          f"fresh TensorFlow process (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1][len("VERIFY "):])
    if result["modules"]:
        raise ExportError(f"the verification process imported {result['modules']}; it must "
                          "check the export without rfcn_tf")
    if result["non_stock_ops"]:
        raise ExportError(
            f"the export at {export_dir} uses ops stock TensorFlow does not register: "
            f"{result['non_stock_ops']}; build the model with psroi_impl='tf' "
            "(--set model.psroi_impl=tf) so PS-RoI pooling uses the pure-TF twin")
    missing = set(OUTPUT_KEYS) - set(result["outputs"])
    if missing:
        raise ExportError(f"{SIGNATURE_IMAGE} of {export_dir} lacks outputs {sorted(missing)}")
    if not result["same_on_png"]:
        raise ExportError(f"{SIGNATURE_ENCODED} and {SIGNATURE_IMAGE} of {export_dir} disagree "
                          "on the same (PNG-encoded) image")
    return {"num_op_types": result["num_op_types"], "outputs": result["outputs"]}


# --------------------------------------------------------------------------------------------
# Export


def export_saved_model(model: Any, *, class_names: Sequence[str], out_dir: os.PathLike,
                       model_name: str, version: Optional[int] = None, min_size: int,
                       max_size: int, size_multiple: int = SIZE_MULTIPLE,
                       verify: bool = True) -> Path:
    """Writes ``model`` as ``<out_dir>/<model_name>/<version>/`` for TF Serving.

    Args:
      model: the detector (``RFCN`` built with ``psroi_impl="tf"``, weights loaded); anything
        with ``RFCN.detect``'s contract (see ``DetectorServingModule``).
      class_names: names of classes 1..C in order (``DatasetInfo.class_names``); written to
        ``assets/labels.txt``, one per line.
      out_dir: folder holding the models (``export``).
      model_name: the model's folder and TF Serving ``MODEL_NAME`` (``rfcn``).
      version: a positive integer; None takes the next free one. An existing version is never
        overwritten.
      min_size, max_size: the resize of the serving graph, pixels (``evaluation_scale(data.scales)``,
        ``data.max_size``).
      size_multiple: padding multiple (the feature stride, 16).
      verify: run ``verify_export`` (fresh process: stock ops, both signatures) before the
        version is renamed into place.

    Returns:
      the version folder's path.

    Raises:
      ExportError: the version exists, or the export fails verification (nothing is left in
        the model folder then).
      ValueError: bad names, sizes or version.
    """
    names = _check_class_names(class_names)
    if not model_name or os.sep in model_name or model_name.startswith("."):
        raise ValueError(f"model_name must be a plain folder name, got {model_name!r}")
    base = Path(out_dir) / model_name
    if version is None:
        version = next_version(base)
    if int(version) < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    version = int(version)
    target = base / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists; pass another version (next free: "
                          f"{next_version(base)}) or remove it")
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            labels = Path(scratch) / LABELS_FILENAME
            labels.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
            module = DetectorServingModule(model, min_size=min_size, max_size=max_size,
                                           size_multiple=size_multiple,
                                           labels_path=str(labels))
            saved = staging / "model"
            tf.saved_model.save(module, str(saved), signatures=module.signatures())
        if verify:
            verify_export(saved)
        if target.exists():  # written by someone else meanwhile
            raise ExportError(f"{target} appeared while exporting; not overwriting it")
        os.replace(saved, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.export",
        description="Export a trained R-FCN checkpoint as a SavedModel in TF Serving's layout "
                    "(<out>/<version>/ with signatures serving_default and serving_encoded and "
                    "assets/labels.txt), optionally converted with TF-TRT or to ONNX.")
    add_config_arguments(parser, set_example="data.scales=[800]",
                         config_help="default: the run's config.yaml found beside the "
                                     "checkpoint, else shapes_tiny; must describe the "
                                     "checkpoint's model. model.psroi_impl is forced to 'tf' "
                                     "(stock ops)")
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint prefix (runs/x/checkpoints/ckpt-1500) or a "
                             "folder of checkpoints (the latest is used); class names come "
                             "from data.class_names, else the run's classes.txt, else the "
                             "dataset")
    parser.add_argument("--out", default=None,
                        help="the model's base path, whose last folder is the model name "
                             "(default: <export.out_dir>/<export.model_name>, e.g. export/rfcn)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (default: export.version, else the next "
                             "free one); an existing version is never overwritten")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check in a fresh Python process (stock ops only, both "
                             "signatures run)")
    parser.add_argument("--tensorrt", choices=("fp32", "fp16", "int8"), default=None,
                        help="also convert with TF-TRT into <out>_trt_<precision>/<version>/ "
                             "(needs TensorFlow built with TensorRT and a GPU)")
    parser.add_argument("--calibration-images", type=int, default=32, metavar="N",
                        help="INT8 calibration: images from the validation split (default 32)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write <out>_onnx/<version>/model.onnx (tf2onnx, opset 17) "
                             "and check it against the SavedModel with onnxruntime")
    parser.add_argument("--onnx-opset", type=int, default=17, help="ONNX opset (default 17)")
    return parser


def _class_names(config: Any, checkpoint: str) -> tuple[list[str], str]:
    """Names of classes 1..C and where they came from: ``data.class_names``, else the
    ``classes.txt`` training wrote beside its checkpoints, else the dataset source's."""
    from rfcn_tf.evaluate import find_run_file

    if config.data.class_names:
        return list(config.data.class_names), "data.class_names"
    saved = find_run_file(checkpoint, "classes.txt")
    if saved is not None:
        names = [line.strip() for line in Path(saved).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        if names:
            return names, saved
    from rfcn_tf.data.pipeline import build_source

    _, info = build_source(config.data, split=config.data.val_split)
    return list(info.class_names), f"the {config.data.source} dataset"


def _stage(message: str) -> None:
    """One progress line on stderr per slow step (stdout keeps only the summary)."""
    print(f"[export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _check_checkpoint(checkpoint: str) -> None:
    """Raises naming ``checkpoint`` when no training checkpoint is there."""
    from rfcn_tf.engine.checkpoints import resolve_checkpoint

    resolve_checkpoint(checkpoint, what="--checkpoint")


def _load_model(config: Any, checkpoint: str, *, num_classes: int) -> tuple[Any, str]:
    """The detector of ``config.model`` with a training checkpoint's weights (prefix or
    folder; the class count is checked before restoring)."""
    from rfcn_tf.evaluate import load_checkpoint_detector

    return load_checkpoint_detector(config, checkpoint, num_classes=num_classes,
                                    dataset_desc=f"the {num_classes}-class export")


def run(args: argparse.Namespace) -> str:
    """The CLI's work; returns the summary line. Raises on failure."""
    started = time.perf_counter()
    from rfcn_tf.evaluate import resolve_config

    # The serving graph must hold stock ops only: PS-RoI pooling uses the pure-TF twin
    # whatever the training used (the weights are the same).
    config, config_from = resolve_config(args.config, list(args.overrides)
                                         + ["model.psroi_impl=tf"], checkpoint=args.checkpoint)
    if args.tensorrt:  # fail before the slow part when TF-TRT cannot run here
        from rfcn_tf.deploy.tensorrt import require_tensorrt

        require_tensorrt()
    out = Path(args.out) if args.out else Path(config.export.out_dir) / config.export.model_name
    version = args.version if args.version is not None else config.export.version
    if version is not None and (out / str(version)).exists():  # fail before building anything
        raise ExportError(f"{out / str(version)} already exists; pass another --version (next "
                          f"free: {next_version(out)}) or remove it")
    _check_checkpoint(args.checkpoint)
    names, names_from = _class_names(config, args.checkpoint)
    _stage(f"building the {config.model.backbone} model ({len(names)} classes) and restoring "
           f"{args.checkpoint}")
    model, restored = _load_model(config, args.checkpoint, num_classes=len(names))
    from rfcn_tf.data.pipeline import evaluation_scale  # the resize evaluation uses, too
    min_size, max_size = int(evaluation_scale(config.data.scales)), int(config.data.max_size)
    _stage(f"tracing and saving {out}/<version>"
           + ("; then checking it in a fresh Python process" if not args.no_verify else ""))
    path = export_saved_model(model, class_names=names, out_dir=out.parent, model_name=out.name,
                              version=version, min_size=min_size, max_size=max_size,
                              verify=not args.no_verify)
    extras = []
    if args.tensorrt:
        from rfcn_tf.deploy.tensorrt import convert_saved_model, dataset_calibration_images

        _stage(f"converting with TF-TRT ({args.tensorrt})")
        calibration = None
        if args.tensorrt == "int8":
            calibration = dataset_calibration_images(config.data, count=args.calibration_images)
        trt_path = convert_saved_model(
            path, output_dir=out.parent / f"{out.name}_trt_{args.tensorrt}" / path.name,
            precision=args.tensorrt, calibration_images=calibration)
        extras.append(f"TF-TRT {args.tensorrt} at {trt_path}")
    if args.onnx:
        from rfcn_tf.deploy.onnx_export import export_onnx, verify_onnx

        _stage(f"converting to ONNX (opset {args.onnx_opset}) and checking it with onnxruntime")
        onnx_path = export_onnx(path, output_path=out.parent / f"{out.name}_onnx" / path.name /
                                "model.onnx", opset=args.onnx_opset)
        images, described = _onnx_check_images(config)
        comparison = verify_onnx(onnx_path, path, images=images)
        extras.append(f"ONNX at {onnx_path} (onnxruntime matches on {described}: "
                      f"{comparison.describe()})")
    return (f"exported {out.name} version {path.name} to {path}: {len(names)} classes (from "
            f"{names_from}), config {config_from}, weights {restored}, resize "
            f"{min_size}/{max_size}"
            + (", verified (stock ops, both signatures run)" if not args.no_verify else "")
            + ("; " + "; ".join(extras) if extras else "")
            + f"; {time.perf_counter() - started:.1f} s")


def _onnx_check_images(config: Any, count: int = 2) -> tuple[Optional[list], str]:
    """A few validation images (uint8 [1, H, W, 3]) for the ONNX check and their description;
    (None, why) when the dataset cannot be read here (the check then uses generated images)."""
    try:
        from rfcn_tf.data.pipeline import build_source

        examples, _ = build_source(config.data, split=config.data.val_split)
        images = [example["image"].numpy()[None] for example in examples.take(count)]
    except Exception as exc:  # the dataset is optional for exporting
        return None, f"generated images (dataset unreadable: {type(exc).__name__})"
    if not images:
        return None, "generated images (empty validation split)"
    return images, f"{len(images)} {config.data.val_split} images"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(run(args))
    except Exception as exc:  # the CLI's contract: a clear message and a non-zero exit
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
