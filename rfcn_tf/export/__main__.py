"""``python -m rfcn_tf.export``: a training checkpoint -> a SavedModel for TF Serving.

Thin CLI over ``rfcn_tf.export.saved_model`` (+ ``onnx``, ``tensorrt``); the serving contract is
``rfcn_tf.export.contract``. TensorFlow is imported only after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rfcn_tf.cli_args import add_config_arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.export",
        description="Export a trained R-FCN checkpoint as a SavedModel in TF Serving's layout "
        "(<out>/<version>/ with the batched signatures serving_default, "
        "serving_encoded, tf_example and serving_custom, assets/labels.txt, and "
        "<out>/batching_parameters.txt), optionally converted with TF-TRT or to ONNX.",
    )
    add_config_arguments(
        parser,
        set_example="data.scales=[800]",
        config_help="default: the run's config.yaml found beside the "
        "checkpoint, else shapes_tiny; must describe the "
        "checkpoint's model. model.head.psroi_impl is forced to 'tf' "
        "(stock ops)",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="training checkpoint prefix (runs/x/checkpoints/ckpt-1500) or a "
        "folder of checkpoints (the latest is used); class names come "
        "from data.class_names, else the run's classes.txt, else the "
        "dataset",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="the model's base path, whose last folder is the model name "
        "(default: <export.out_dir>/<export.model_name>, e.g. export/rfcn)",
    )
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        help="version number to write (default: export.version, else the next "
        "free one); an existing version is never overwritten",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check in a fresh Python process (stock ops only, every "
        "signature runs) and the batching measurement",
    )
    parser.add_argument(
        "--tensorrt",
        choices=("fp32", "fp16", "int8"),
        default=None,
        help="also convert with TF-TRT into <out>_trt_<precision>/<version>/ "
        "(needs TensorFlow built with TensorRT and a GPU)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=32,
        metavar="N",
        help="INT8 calibration: images from the validation split (default 32)",
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also write <out>_onnx/<version>/model.onnx (tf2onnx, opset 17) "
        "and check it against the SavedModel with onnxruntime",
    )
    parser.add_argument("--onnx-opset", type=int, default=17, help="ONNX opset (default 17)")
    return parser


def _stage(message: str) -> None:
    """One progress line on stderr per slow step (stdout keeps only the summary)."""
    print(f"[export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> str:
    """The CLI's work; returns the summary line. Raises on failure."""
    started = time.perf_counter()
    from rfcn_tf.export.saved_model import ExportError, export_saved_model, next_version
    from rfcn_tf.export.steps import class_names, load_model, onnx_check_images, resolve_config

    # The serving graph must hold stock ops only: PS-RoI pooling uses the pure-TF twin
    # whatever the training used (the weights are the same).
    config, config_from = resolve_config(
        args.config, list(args.overrides) + ["model.head.psroi_impl=tf"], checkpoint=args.checkpoint
    )
    if args.tensorrt:  # fail before the slow part when TF-TRT cannot run here
        from rfcn_tf.export.tensorrt import require_tensorrt

        require_tensorrt()
    out = Path(args.out) if args.out else Path(config.export.out_dir) / config.export.model_name
    version = args.version if args.version is not None else config.export.version
    if version is not None and (out / str(version)).exists():  # fail before building anything
        raise ExportError(
            f"{out / str(version)} already exists; pass another --version (next "
            f"free: {next_version(out)}) or remove it"
        )
    names, names_from = class_names(config, args.checkpoint)
    _stage(
        f"building the {config.model.backbone.name} model ({len(names)} classes) and restoring "
        f"{args.checkpoint}"
    )
    model, restored = load_model(config, args.checkpoint, num_classes=len(names))
    from rfcn_tf.data.pipeline import evaluation_scale  # the resize evaluation uses, too

    min_size, max_size = int(evaluation_scale(config.data.scales)), int(config.data.max_size)
    _stage(
        f"tracing and saving {out}/<version>"
        + ("; then checking it in a fresh Python process" if not args.no_verify else "")
    )
    path = export_saved_model(
        model,
        class_names=names,
        out_dir=out.parent,
        model_name=out.name,
        version=version,
        min_size=min_size,
        max_size=max_size,
        verify=not args.no_verify,
    )
    extras = []
    if args.tensorrt:
        from rfcn_tf.export.tensorrt import convert_saved_model, dataset_calibration_images

        _stage(f"converting with TF-TRT ({args.tensorrt})")
        calibration = None
        if args.tensorrt == "int8":
            calibration = dataset_calibration_images(config.data, count=args.calibration_images)
        trt_path = convert_saved_model(
            path,
            output_dir=out.parent / f"{out.name}_trt_{args.tensorrt}" / path.name,
            precision=args.tensorrt,
            calibration_images=calibration,
        )
        extras.append(f"TF-TRT {args.tensorrt} at {trt_path}")
    if args.onnx:
        from rfcn_tf.export import onnx as onnx_lib

        _stage(f"converting to ONNX (opset {args.onnx_opset}) and checking it with onnxruntime")
        onnx_path = onnx_lib.export_onnx(
            path,
            output_path=out.parent / f"{out.name}_onnx" / path.name / "model.onnx",
            opset=args.onnx_opset,
        )
        images, described = onnx_check_images(config)
        comparison = onnx_lib.verify_onnx(onnx_path, path, images=images)
        extras.append(
            f"ONNX at {onnx_path} (onnxruntime matches on {described}: {comparison.describe()})"
        )
    return (
        f"exported {out.name} version {path.name} to {path}: {len(names)} classes (from "
        f"{names_from}), config {config_from}, weights {restored}, resize "
        f"{min_size}/{max_size}"
        + (", verified (stock ops, every signature runs)" if not args.no_verify else "")
        + ("; " + "; ".join(extras) if extras else "")
        + f"; {time.perf_counter() - started:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(run(args))
    except Exception as exc:  # the CLI's contract: a clear message and a non-zero exit
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
