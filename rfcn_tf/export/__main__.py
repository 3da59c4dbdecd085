"""``python -m rfcn_tf.export``: a training checkpoint -> a SavedModel for TF Serving.

Thin CLI over ``rfcn_tf.export.saved_model`` (+ ``onnx``, ``tensorrt``); the serving contract is
``rfcn_tf.export.contract``. TensorFlow is imported only after the arguments are parsed.
Errors go through ``rfcn_tf.cli_args.run_cli`` (one line, exit 1; traceback with ``--debug``);
the line keeps this tool's ``error: <Type>: <message>`` form.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from rfcn_tf.cli_args import add_common_arguments, add_config_arguments, run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.export",
        description="Export a trained R-FCN checkpoint as a SavedModel in TF Serving's layout "
        "(<out>/<version>/ with the batched signatures serving_default, serving_encoded, "
        "tf_example and serving_custom, assets/labels.txt, and <out>/batching_parameters.txt), "
        "optionally converted with TF-TRT or to ONNX.",
    )
    add_config_arguments(
        parser,
        print_config=True,
        set_example="data.scales=[800]",
        config_help="default: the run's config.yaml beside the checkpoint, else shapes_tiny; "
        "must describe the checkpoint's model (model.head.psroi_impl is forced to 'tf')",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="training checkpoint prefix (runs/x/checkpoints/ckpt-1500) or a folder of "
        "checkpoints (the latest is used); class names come from data.class_names, else the "
        "run's classes.txt, else the dataset",
    )
    parser.add_argument(
        "--out",
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
        help="skip the check in a fresh Python process (stock ops only, every signature runs) "
        "and the batching measurement",
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
    parser.add_argument(
        "--int8",
        action="store_true",
        help="with --onnx: also write model_int8.onnx, statically quantized by onnxruntime (INT8 "
        "per-channel convolutions, calibrated on --calibration-images images), checked vs fp32",
    )
    parser.add_argument(
        "--int8-eval-images",
        type=int,
        default=50,
        metavar="N",
        help="with --int8: mAP@0.5 (VOC07) and COCO AP of TF, fp32 and int8 onnxruntime on the "
        "first N validation images, beside int8's speed-up (default 50; 0: skip)",
    )
    add_common_arguments(parser, progress=False)  # progress is one stderr line per step
    return parser


class _ExportCLIError(Exception):
    """An export failure as the line this CLI prints: ``<Type>: <message>``."""


def _stage(message: str) -> None:
    """One progress line on stderr per slow step (stdout keeps only the summary)."""
    print(f"[export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> str:
    """The CLI's work (``rfcn_tf.export.steps.export_checkpoint``); returns the summary line."""
    from rfcn_tf.export.steps import export_checkpoint

    return export_checkpoint(
        args.checkpoint,
        config=args.config,
        overrides=args.overrides,
        out=args.out,
        version=args.version,
        verify=not args.no_verify,
        tensorrt=args.tensorrt,
        onnx=args.onnx,
        onnx_opset=args.onnx_opset,
        int8=args.int8,
        calibration_images=args.calibration_images,
        int8_eval_images=args.int8_eval_images,
        stage=_stage,
    )


def _main(args: argparse.Namespace) -> int:
    if args.print_config:  # the resolved, validated config the export would use
        from rfcn_tf.config import validate
        from rfcn_tf.export.steps import resolve_config

        cfg = resolve_config(args.config, args.overrides, checkpoint=args.checkpoint)[0]
        validate(cfg)
        print(cfg.to_yaml(), end="")
        return 0
    try:
        print(run(args))
    except Exception as exc:  # named by its type, as this CLI always printed it
        raise _ExportCLIError(f"{type(exc).__name__}: {exc}") from exc
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
