"""Train R-FCN: ``python -m rfcn_tf.train``.

With no arguments it trains the embedded default (``configs/shapes_tiny.yaml``: synthetic
shapes, small backbone, CPU), evaluates the result on the shapes validation split and exports
a SavedModel under the work dir, printing where everything went. The steps are
`rfcn_tf.training`'s; the work dir layout is `rfcn_tf.run_dir`'s.

Rerunning the same command after an interruption resumes from the work dir's latest checkpoint
(step, weights, optimizer slots, schedule position; the alternating scheme's stage too). A work
dir is locked while a run writes to it: a second run on it refuses, naming the first.
Multi-worker training: start the same command on every worker with ``--strategy multi_worker``
and a ``TF_CONFIG`` naming the cluster and the worker's index (only the chief takes the lock).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rfcn_tf.cli_args import add_common_arguments, add_config_arguments, run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.train",
        description="Train an R-FCN detector (Dai et al., NIPS 2016), then evaluate it and export "
        "a SavedModel. With no arguments: the synthetic-shapes default on the CPU. "
        "Rerun the same command to resume an interrupted run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m rfcn_tf.train\n"
        "  python -m rfcn_tf.train --config bccd --set data.voc_root=../shared/data/BCCD\n"
        "  python -m rfcn_tf.train --config voc07_resnet101 --strategy mirrored\n"
        "  python -m rfcn_tf.train --set train.scheme=alternating "
        "--set train.stage_steps=[400,400,200,200]",
    )
    add_config_arguments(
        parser,
        print_config=True,
        set_example="train.lr=0.01 or --set data.scales=[480]",
        config_help="presets: shapes_tiny, bccd, voc07_resnet101, coco_resnet101 "
        "(default: shapes_tiny)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="run folder for config.yaml, checkpoints, TensorBoard events, "
        "metrics and the export (default: train.work_dir of the config)",
    )
    parser.add_argument(
        "--strategy",
        default=None,
        choices=("default", "mirrored", "multi_worker"),
        help="distribution: default = one device; mirrored = all local GPUs; "
        "multi_worker = the cluster in TF_CONFIG (default: train.strategy)",
    )
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the evaluation after training (train.evaluate_at_end)",
    )
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="skip the SavedModel export after training (train.export_at_end)",
    )
    parser.add_argument(
        "--export-dir",
        default=None,
        metavar="DIR",
        help="folder of the end-of-training export (default: <work dir>/export, "
        "or export.out_dir when the config sets it)",
    )
    add_common_arguments(parser)
    return parser


def _setup_logging() -> None:
    root = logging.getLogger("rfcn_tf")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # one line per message even when a library configured the root


def _run(args: argparse.Namespace) -> int:
    from rfcn_tf.config import load_config

    load_config(args.config, args.overrides)  # imports no TensorFlow: a bad value fails at once
    from rfcn_tf import training

    _setup_logging()
    cfg = training.load_run_config(
        args.config, args.overrides, work_dir=args.work_dir, strategy=args.strategy
    )
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    report = training.run(
        cfg,
        progress=not args.no_progress,
        evaluate_at_end=not args.no_eval,
        export_at_end=not args.no_export,
        export_dir=args.export_dir,
    )
    print(training.format_report(report), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with one message, 130 interrupted)."""
    return run_cli(
        build_parser(),
        _run,
        argv,
        interrupted="interrupted; rerun the same command to resume from the last checkpoint",
    )


if __name__ == "__main__":
    sys.exit(main())
