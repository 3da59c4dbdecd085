"""Look at a dataset before training on it: a grid of samples with boxes, and statistics.

    python -m rfcn_tf.data.inspect --config bccd --split test --num 16 --out grid.png

The grid shows what the model is fed (the batched features: resized, and with `--augment` also
flipped / jittered / multi-scale as in training) with the ground-truth boxes and class names.
The statistics are computed on the source's examples (original images, before any transform):
images, empty images, image sizes, and per class the number of boxes, difficult and crowd boxes
and the box size sqrt(width * height) in ORIGINAL pixels (min / median / max).

Exit status: 0 on success; 1 with one `error: ...` line on a configuration or data problem.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rfcn_tf.cli_args import add_common_arguments, add_config_arguments, run_cli

__all__ = ["build_parser", "main"]

# An endless split (shapes train) is measured on this many images unless --max-images says.
_ENDLESS_DEFAULT = 500


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.data.inspect",
        description="Draw a grid of dataset samples with their ground-truth boxes and print "
        "dataset statistics (images, boxes per class, box sizes in pixels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(
        parser,
        print_config=True,
        set_example="data.voc_root=/data/BCCD",
        config_help="e.g. shapes_tiny or bccd; default: the default preset (shapes_tiny)",
    )
    parser.add_argument(
        "--split", default=None, help="split to inspect; default: data.train_split of the config"
    )
    parser.add_argument(
        "--num", type=int, default=16, help="number of samples drawn in the grid (0: no grid)"
    )
    parser.add_argument("--cols", type=int, default=4, help="grid columns")
    parser.add_argument(
        "--augment",
        action="store_true",
        help="draw the samples with the TRAINING transforms (shuffle, multi-scale, "
        "flip, photometric jitter as configured) instead of the evaluation "
        "resize",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="compute statistics on at most this many images; default: the whole "
        f"split ({_ENDLESS_DEFAULT} for an endless split such as shapes train)",
    )
    parser.add_argument("--no-stats", action="store_true", help="skip the statistics pass")
    parser.add_argument(
        "--suggest",
        action="store_true",
        help="suggest model.anchors scales and ratios covering the split's boxes "
        "at the training scale, with the share of boxes no anchor matches "
        "at IoU 0.5 (suggested and configured anchors)",
    )
    parser.add_argument(
        "--out", default="grid.png", help="PNG file the grid is written to (folders are created)"
    )
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> str:
    """Does the work; returns the one-line summary."""
    from rfcn_tf.config import load_config, validate

    if args.num < 0:
        raise ValueError(f"--num must be >= 0, got {args.num}")
    if args.cols < 1:
        raise ValueError(f"--cols must be >= 1, got {args.cols}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    config = load_config(args.config, args.overrides)  # (no TensorFlow yet: a bad one fails fast)
    if args.print_config:
        validate(config)
        return config.to_yaml().rstrip("\n")
    from rfcn_tf.data.anchor_stats import suggestion_report
    from rfcn_tf.data.inspection import collect_statistics, format_statistics, render_grid
    from rfcn_tf.data.pipeline import build_source

    data_cfg = config.data
    split = args.split or data_cfg.train_split
    dataset, info = build_source(data_cfg, split=split)
    parts = [f"{data_cfg.source} split {split!r}: {info.num_classes} classes"]
    max_images = args.max_images
    if max_images is None and info.num_examples is None:
        max_images = _ENDLESS_DEFAULT

    if not args.no_stats:
        stats = collect_statistics(
            dataset,
            info.class_names,
            max_images=max_images,
            total=info.num_examples,
            progress=not args.no_progress,
        )
        print(format_statistics(stats), flush=True)
        parts.append(f"{stats['images']} images, {sum(c['boxes'] for c in stats['classes'])} boxes")
    if args.suggest:
        report, unmatched = suggestion_report(config, dataset, max_images=max_images)
        print(report, flush=True)
        parts.append(f"anchors suggested ({100 * unmatched:.1f}% unmatched)")
    if args.num > 0:
        from PIL import Image

        grid = render_grid(
            data_cfg,
            split=split,
            num=args.num,
            cols=args.cols,
            augment=args.augment,
            class_names=info.class_names,
        )
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(grid).save(args.out)
        parts.append(f"grid of {args.num} samples ({grid.shape[1]}x{grid.shape[0]}) -> {args.out}")
    return "inspected " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with one message)."""

    def _run(args: argparse.Namespace) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        print(run(args), flush=True)

    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
