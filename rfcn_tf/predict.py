"""Detect objects in image files: ``python -m rfcn_tf.predict IMAGES... --out DIR``.

Each image is written to ``--out`` as ``<name>.png`` with its detections drawn, and all
detections go to ``--out/detections.json``. Inputs may be files, folders (their image files,
not recursive) and quoted glob patterns. The model is loaded with `rfcn_tf.load`'s backends
(``--checkpoint``: built from the run's config.yaml unless --config; ``--saved-model``: the
export's serving_default); images are decoded by `rfcn_tf.images.read_image` (EXIF applied).
An unreadable image (missing, corrupt, dangling link) is reported by name on stderr and in
detections.json's "failed" list; the others are still processed and the exit status is 1.

detections.json::

    {"model": {...}, "score_threshold": 0.5, "class_names": [...],
     "images": [{"file", "output", "height", "width",
                 "detections": [{"box_yxyx": [y1, x1, y2, x2] ORIGINAL-image pixels,
                                 "score", "class_id" (1..C), "class_name"}]}],
     "failed": [{"file", "error"}]}
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rfcn_tf.cli_args import (
    add_common_arguments,
    add_config_arguments,
    add_model_source_arguments,
    add_score_threshold_argument,
    run_cli,
)
from rfcn_tf.errors import InputError
from rfcn_tf.inference.inputs import IMAGE_EXTENSIONS, expand_inputs

__all__ = ["IMAGE_EXTENSIONS", "build_parser", "expand_inputs", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.predict",
        description=(
            "Run an R-FCN detector on image files; write each image with its boxes, "
            "class names and scores drawn (<out>/<name>.png) and every detection to "
            "<out>/detections.json (boxes yxyx in original-image pixels)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m rfcn_tf.predict photo.jpg more/ 'shots/*.png' "
            "--checkpoint runs/shapes_tiny --out predictions\n"
            "  python -m rfcn_tf.predict img.jpg --saved-model export/rfcn --out pred "
            "--score-threshold 0.3\n"
            "exit status: 0 when every image was processed, 1 otherwise (unreadable "
            "images are reported by name and skipped)"
        ),
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help=(
            "image files, folders (their image files, not recursive) or quoted glob "
            "patterns such as 'data/*.jpg' ('**' recurses)"
        ),
    )
    add_model_source_arguments(parser, saved_model_note="; class names from labels.txt")
    add_config_arguments(
        parser,
        print_config=True,
        set_example="data.scales=[800]",
        config_help=(
            "used with --checkpoint (model, input size, class names); default: the "
            "run's config.yaml next to the checkpoint, else shapes_tiny"
        ),
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created): annotated images and detections.json",
    )
    add_score_threshold_argument(parser, default=0.5, what="draw and save")
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    from rfcn_tf.run_dir import resolve_config

    if not 0.0 <= args.score_threshold <= 1.0:
        raise InputError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.print_config:
        print(
            resolve_config(args.config, args.overrides, checkpoint=args.checkpoint)[0].to_yaml(),
            end="",
        )
        return 0
    paths, failed = expand_inputs(args.images)
    for item in failed:
        print(f"error: {item['file']}: {item['error']}", file=sys.stderr)
    if not paths:  # (before TensorFlow is imported: a wrong path is said at once)
        raise InputError(f"no image to process among {list(args.images)}")
    from rfcn_tf.inference.detector import load_checkpoint, load_saved_model
    from rfcn_tf.inference.files import predict_files

    if args.checkpoint:
        detector = load_checkpoint(
            args.checkpoint,
            config=args.config,
            overrides=args.overrides,
            score_threshold=args.score_threshold,
        )
    else:
        if args.config or args.overrides:
            print(
                "note: --config/--set are not used with --saved-model (the export carries "
                "its preprocessing and class names)",
                file=sys.stderr,
            )
        detector = load_saved_model(args.saved_model, score_threshold=args.score_threshold)
    records, total = predict_files(
        detector,
        paths,
        args.out,
        failed=failed,
        score_threshold=args.score_threshold,
        progress=not args.no_progress,
    )
    status = (
        "" if not failed else f" ({len(failed)} failed: {', '.join(x['file'] for x in failed)})"
    )
    print(
        f"predicted {len(records)} images{status}, {total} detections with score >= "
        f"{args.score_threshold:g} -> {args.out}",
        flush=True,
    )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0: every image processed, 1 otherwise)."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
