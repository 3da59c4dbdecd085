"""Writing and checking the SavedModel for TF Serving (``export_saved_model``, ``verify_export``).

Layout (TF Serving's): ``<out_dir>/<model_name>/<version>/`` holding ``saved_model.pb``,
``variables/``, ``assets/labels.txt`` (line i names class i) and ``assets/export.json`` (the
resize and post-processing defaults); ``<out_dir>/<model_name>/batching_parameters.txt`` beside
the versions is TF Serving's ``--batching_parameters_file`` (``write_batching_parameters``).
The version is the next free integer by default; a version is written under a hidden
temporary name and renamed into place only once it is complete and verified, so a server
polling the folder never loads half a model.

The signatures and outputs are ``rfcn_tf.export.contract``'s; the graph is
``rfcn_tf.export.serving_module``'s. The model must be built with ``psroi_impl="tf"`` so the
graph holds stock TensorFlow ops only; ``verify_export`` checks that in a fresh Python process
that never imports rfcn_tf (a process that loaded the custom op library would count its op as
registered), and runs every signature there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from rfcn_tf.errors import ExportError
from rfcn_tf.export.contract import (
    ALL_OUTPUT_KEYS,
    BATCHING_PARAMETERS_FILENAME,
    EXPORT_INFO_FILENAME,
    INPUT_ENCODED,
    INPUT_IMAGE,
    INPUT_TF_EXAMPLE,
    LABELS_FILENAME,
    SIGNATURE_CUSTOM,
    SIGNATURE_ENCODED,
    SIGNATURE_IMAGE,
    SIGNATURE_TF_EXAMPLE,
    SIGNATURES,
    SIZE_MULTIPLE,
    TF_EXAMPLE_IMAGE_KEY,
)
from rfcn_tf.export.serving_module import DetectorServingModule

__all__ = [
    "ExportError",
    "export_saved_model",
    "list_versions",
    "next_version",
    "saved_model_op_types",
    "verify_export",
    "write_batching_parameters",
]


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
            raise ValueError(
                f"class_names[{index}] = {name!r}: names must be non-empty "
                "single-line strings (labels.txt has one per line)"
            )
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
# stock TensorFlow, and every signature must run on small generated images and agree with
# serving_default image by image. It also times serving_default at batch 1 and 4 (the
# numbers behind batching_parameters.txt).
_VERIFY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry
    from tensorflow.core.protobuf import saved_model_pb2
    path, args = sys.argv[1], json.loads(sys.argv[2])
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
        m for m in sys.modules if m == "rfcn_tf" or m.startswith("rfcn_tf.")], "problems": []}
    def close(a, b, what):
        for k in a:
            if not np.allclose(a[k], b[k], atol=1e-4):
                result["problems"].append(f"{what}: {k} differs by "
                                          f"{float(np.abs(a[k] - b[k]).max()):.2e}")
    if not unknown:
        loaded = tf.saved_model.load(path)
        sig = loaded.signatures
        result["signatures"] = sorted(sig)
        run = lambda key, **kw: {k: v.numpy() for k, v in sig[key](**kw).items()}
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, s, dtype=np.uint8) for s in
                  ((48, 64, 3), (48, 64, 3), (70, 41, 3))]
        single = [run(args["image"], **{args["input_image"]: tf.constant(im[None])})
                  for im in images]
        out = run(args["image"], **{args["input_image"]: tf.constant(np.stack(images[:2]))})
        result["outputs"] = {k: [v.dtype.name, list(v.shape)] for k, v in out.items()}
        for i in range(2):
            close({k: v[i:i + 1] for k, v in out.items()}, single[i], f"{args['image']} item {i}")
        pngs = [tf.io.encode_png(im).numpy() for im in images]
        enc = run(args["encoded"], **{args["input_encoded"]: tf.constant(pngs)})
        for i in range(3):
            close({k: v[i:i + 1] for k, v in enc.items()}, single[i], f"{args['encoded']} item {i}")
        examples = [tf.train.Example(features=tf.train.Features(feature={
            args["example_key"]: tf.train.Feature(bytes_list=tf.train.BytesList(value=[p]))}))
            .SerializeToString() for p in pngs[2:]]
        exa = run(args["tf_example"], **{args["input_tf_example"]: tf.constant(examples)})
        close(exa, single[2], args["tf_example"])
        custom = run(args["custom"], **{args["input_image"]: tf.constant(images[0][None])},
                     **{k: tf.constant(v) for k, v in args["defaults"].items()})
        close(custom, single[0], args["custom"] + " with the defaults")
        if args["time"]:
            x1 = tf.constant(images[0][None])
            x4 = tf.constant(np.stack([images[0]] * 4))
            t1 = []
            for _ in range(3):
                tic = time.perf_counter(); sig[args["image"]](**{args["input_image"]: x1})
                t1.append(time.perf_counter() - tic)
            sig[args["image"]](**{args["input_image"]: x4})
            tic = time.perf_counter(); sig[args["image"]](**{args["input_image"]: x4})
            t4 = time.perf_counter() - tic
            result["timing"] = {"batch1_s": sorted(t1)[1], "batch4_s": t4}
    print("VERIFY " + json.dumps(result))
""")


def verify_export(
    export_dir: os.PathLike,
    *,
    defaults: dict | None = None,
    measure: bool = False,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Checks a SavedModel in a fresh Python process that does not import rfcn_tf.

    Checks: every op type of the graph and its function library is registered in stock
    TensorFlow; ``serving_default`` runs on a batch of two 48x64 generated images and returns
    every output of the contract, each image's rows equal to its single-image call (1e-4);
    ``serving_encoded`` on the PNGs of three images of two sizes, ``tf_example`` on one and
    ``serving_custom`` with ``defaults`` give the same detections as ``serving_default``.

    Args:
      defaults: ``serving_custom``'s inputs that must reproduce ``serving_default`` (the
        module's ``defaults``); read from ``assets/export.json`` when None.
      measure: also time ``serving_default`` at batch 1 and 4 (``result["timing"]``).

    Returns:
      ``{"num_op_types": int, "signatures": [...], "outputs": {name: [dtype, shape]}}`` and,
      with ``measure``, ``"timing": {"batch1_s", "batch4_s"}`` (seconds per call).

    Raises:
      ExportError: naming the non-stock ops, the failing signature or the process's error.
    """
    export_dir = Path(export_dir).resolve()  # absolute: the check runs in another directory
    if defaults is None:
        info = json.loads((export_dir / "assets" / EXPORT_INFO_FILENAME).read_text())
        defaults = info["postprocess"]
    args = {
        "image": SIGNATURE_IMAGE,
        "encoded": SIGNATURE_ENCODED,
        "tf_example": SIGNATURE_TF_EXAMPLE,
        "custom": SIGNATURE_CUSTOM,
        "input_image": INPUT_IMAGE,
        "input_encoded": INPUT_ENCODED,
        "input_tf_example": INPUT_TF_EXAMPLE,
        "example_key": TF_EXAMPLE_IMAGE_KEY,
        "defaults": defaults,
        "time": bool(measure),
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env.pop("PYTHONPATH", None)  # the check must not see this checkout's packages
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY_SCRIPT, str(export_dir), json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=tempfile.gettempdir(),
        )
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"verifying {export_dir} took over {timeout_s} s") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("VERIFY ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ExportError(
            f"the exported model at {export_dir} failed to load or run in a "
            f"fresh TensorFlow process (exit {proc.returncode}):\n{tail}"
        )
    result = json.loads(lines[-1][len("VERIFY ") :])
    if result["modules"]:
        raise ExportError(
            f"the verification process imported {result['modules']}; it must "
            "check the export without rfcn_tf"
        )
    if result["non_stock_ops"]:
        raise ExportError(
            f"the export at {export_dir} uses ops stock TensorFlow does not register: "
            f"{result['non_stock_ops']}; build the model with psroi_impl='tf' "
            "(--set model.head.psroi_impl=tf) so PS-RoI pooling uses the pure-TF twin"
        )
    missing = set(SIGNATURES) - set(result["signatures"])
    if missing:
        raise ExportError(f"{export_dir} lacks the signatures {sorted(missing)}")
    missing = set(ALL_OUTPUT_KEYS) - set(result["outputs"])
    if missing:
        raise ExportError(f"{SIGNATURE_IMAGE} of {export_dir} lacks outputs {sorted(missing)}")
    if result["problems"]:
        raise ExportError(
            f"the signatures of {export_dir} disagree with {SIGNATURE_IMAGE} on "
            f"the same images: {'; '.join(result['problems'])}"
        )
    result.pop("modules")
    result.pop("non_stock_ops")
    result.pop("problems")
    return result


def write_batching_parameters(
    model_base: os.PathLike,
    *,
    timing: dict | None = None,
    max_batch_size: int = 8,
    num_batch_threads: int | None = None,
    note: str = "",
) -> Path:
    """Writes TF Serving's ``--batching_parameters_file`` into the model base.

    The values: ``max_batch_size`` 8 (the clients' largest batch); ``batch_timeout_micros``
    10 % of the measured batch-1 latency (clipped to 1..100 ms) when batching speeds up a
    request (measured per-image time at batch 4 below 95 % of batch 1's), else 1 ms (waiting
    would only add latency); ``num_batch_threads`` this machine's cores (set the serving
    machine's); ``max_enqueued_batches`` 16; ``pad_variable_length_inputs`` false: padding
    ``serving_default``'s pixels would change the images, so requests of different sizes are
    not merged (``serving_encoded`` batches any sizes). The measured numbers are comments in
    the file.

    Args:
      timing: ``verify_export(measure=True)["timing"]``, or None (defaults, marked unmeasured).
    """
    threads = int(num_batch_threads or os.cpu_count() or 1)
    if timing:
        t1, t4 = float(timing["batch1_s"]), float(timing["batch4_s"])
        speedup = t1 / max(t4 / 4.0, 1e-9)
        timeout = int(min(max(0.1 * t1 * 1e6, 1000), 100000)) if speedup > 1 / 0.95 else 1000
        measured = (
            f"# measured {time.strftime('%Y-%m-%d')} with {threads} CPU threads "
            f"{note}: serving_default {t1 * 1e3:.1f} ms at batch 1, "
            f"{t4 / 4 * 1e3:.1f} ms/image at batch 4 ({speedup:.2f}x per image)\n"
        )
    else:
        timeout = 1000
        measured = "# not measured (export written without verification): defaults\n"
    text = (
        "# TF Serving batching parameters for this model (tensorflow_model_server "
        "--enable_batching\n# --batching_parameters_file=<this file>), written by "
        "rfcn_tf.export.\n" + measured + f"max_batch_size {{ value: {int(max_batch_size)} }}\n"
        f"batch_timeout_micros {{ value: {timeout} }}\n"
        "max_enqueued_batches { value: 16 }\n"
        f"num_batch_threads {{ value: {threads} }}\n"
        "pad_variable_length_inputs: false\n"
    )
    path = Path(model_base) / BATCHING_PARAMETERS_FILENAME
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Export


def export_saved_model(
    model: Any,
    *,
    class_names: Sequence[str],
    out_dir: os.PathLike,
    model_name: str,
    version: int | None = None,
    min_size: int,
    max_size: int,
    size_multiple: int = SIZE_MULTIPLE,
    verify: bool = True,
    measure_batching: bool | None = None,
) -> Path:
    """Writes ``model`` as ``<out_dir>/<model_name>/<version>/`` for TF Serving.

    Args:
      model: the detector (``RFCN`` built with ``psroi_impl="tf"``, weights loaded); anything
        with its inference contract (see ``DetectorServingModule``).
      class_names: names of classes 1..C in order (``DatasetInfo.class_names``); written to
        ``assets/labels.txt``, one per line.
      out_dir: folder holding the models (``export``).
      model_name: the model's folder and TF Serving ``MODEL_NAME`` (``rfcn``).
      version: a positive integer; None takes the next free one. An existing version is never
        overwritten.
      min_size, max_size: the resize of the serving graph, pixels (``evaluation_scale(data.scales)``,
        ``data.max_size``).
      size_multiple: padding multiple (the feature stride, 16).
      verify: run ``verify_export`` (fresh process: stock ops, every signature) before the
        version is renamed into place.
      measure_batching: time batch 1 and 4 in that process for ``batching_parameters.txt``
        (default: when verifying).

    Returns:
      the version folder's path; ``batching_parameters.txt`` is (re)written in the model base.

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
        raise ExportError(
            f"{target} already exists; pass another version (next free: "
            f"{next_version(base)}) or remove it"
        )
    measure = verify if measure_batching is None else bool(measure_batching) and verify
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
    timing = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            labels = Path(scratch) / LABELS_FILENAME
            labels.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
            module = DetectorServingModule(
                model,
                min_size=min_size,
                max_size=max_size,
                size_multiple=size_multiple,
                assets=[str(labels)],
            )
            info = Path(scratch) / EXPORT_INFO_FILENAME
            info.write_text(
                json.dumps(
                    {
                        "resize": {
                            "min_size": int(min_size),
                            "max_size": int(max_size),
                            "size_multiple": int(size_multiple),
                        },
                        "postprocess": dict(module.defaults),
                        "num_classes": len(names),
                    },
                    indent=1,
                )
                + "\n"
            )
            module.assets.append(tf.saved_model.Asset(str(info)))
            saved = staging / "model"
            tf.saved_model.save(module, str(saved), signatures=module.signatures())
        if verify:
            timing = verify_export(saved, defaults=dict(module.defaults), measure=measure).get(
                "timing"
            )
        if target.exists():  # written by someone else meanwhile
            raise ExportError(f"{target} appeared while exporting; not overwriting it")
        os.replace(saved, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_batching_parameters(base, timing=timing, note=f"for version {version}")
    return target
