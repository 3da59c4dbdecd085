"""Evaluate a trained R-FCN detector: ``python -m rfcn_tf.evaluate`` (COCO AP, VOC07 and
VOC2010+ mAP, overall and per class; metrics.json, metrics.md, pr_curves/, detections.json).

``--checkpoint``: a run folder (its best checkpoint, else the latest), a checkpoint folder or
prefix, built from the run's config.yaml unless --config; ``--saved-model``: an export version
or model base, through ``serving_default``. Library: `rfcn_tf.inference.backends`,
`rfcn_tf.evaluation.evaluator.evaluate_split`, `rfcn_tf.evaluation.multiscale`.
"""

from __future__ import annotations

import argparse
import os
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
from rfcn_tf.run_dir import find_checkpoint, resolve_config

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.evaluate",
        description=(
            "Evaluate an R-FCN detector on a dataset split: COCO AP (pycocotools), "
            "VOC07 11-point mAP and VOC2010+ mAP, overall and per class. Writes "
            "metrics.json, metrics.md, pr_curves/*.png and detections.json (COCO "
            "results) to --out and prints a one-line summary."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m rfcn_tf.evaluate --checkpoint runs/shapes_tiny\n"
            "  python -m rfcn_tf.evaluate --saved-model export/rfcn/1 --max-images 50\n"
            "  python -m rfcn_tf.evaluate --config voc07_resnet101 --set data.voc_root=VOC "
            "--checkpoint runs/voc/checkpoints --split test"
        ),
    )
    add_config_arguments(
        parser,
        print_config=True,
        set_example="eval.batch_size=2",
        config_help=(
            "default: the run's saved config.yaml next to --checkpoint, else the shapes_tiny preset"
        ),
    )
    add_model_source_arguments(parser)
    parser.add_argument("--split", help="split to evaluate (eval.split, else data.val_split)")
    parser.add_argument(
        "--out", metavar="DIR", help="report folder; default: <work_dir>/eval/<split>"
    )
    parser.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help="first N images (default: eval.max_images, else all)",
    )
    add_score_threshold_argument(parser, default=None, what="score (eval.score_threshold)")
    parser.add_argument(
        "--multiscale",
        action="store_true",
        help=(
            "multi-scale testing (R-FCN sec. 4.2): run every shorter side in "
            "eval.multiscale_sizes and merge the detections by per-class NMS "
            "(--checkpoint only)"
        ),
    )
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images must be >= 1, got {args.max_images}")
    if args.checkpoint:  # a wrong path fails before TensorFlow, the dataset and the model
        find_checkpoint(args.checkpoint)
    cfg, config_source = resolve_config(args.config, args.overrides, checkpoint=args.checkpoint)
    from rfcn_tf.evaluation import multiscale as ms
    from rfcn_tf.evaluation.evaluator import dataset_description, evaluate_split, format_summary

    if args.score_threshold is not None:
        cfg.eval.score_threshold = args.score_threshold
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if (multiscale := args.multiscale or cfg.eval.multiscale) and args.saved_model:
        raise InputError("--multiscale needs --checkpoint (also eval.multiscale)")
    split = args.split or cfg.eval.split or cfg.data.val_split
    max_images = args.max_images if args.max_images is not None else cfg.eval.max_images
    out_dir = args.out or os.path.join(cfg.train.work_dir, "eval", split)
    post = cfg.model.postprocess
    if cfg.eval.score_threshold is not None:
        post.score_threshold = float(cfg.eval.score_threshold)
    if multiscale:
        ms.configure_multiscale_input(cfg)

    info = {"config": config_source, "split": split}
    if args.checkpoint:
        from rfcn_tf.data.pipeline import source_info
        from rfcn_tf.inference.backends import load_checkpoint_model

        class_names = list(source_info(cfg.data, split=split).class_names)
        model, info["checkpoint"] = load_checkpoint_model(
            cfg,
            args.checkpoint,
            num_classes=len(class_names),
            dataset_desc=dataset_description(cfg, split),
        )
        detect_fn = model.detect
        if multiscale:
            detect_fn = ms.multiscale_detect_fn_from_config(cfg, model.detect)
            info["multiscale_sizes"] = list(cfg.eval.multiscale_sizes)
    else:
        from rfcn_tf.inference.backends import SavedModelBackend

        backend = SavedModelBackend(args.saved_model)
        class_names, info["saved_model"] = backend.class_names, backend.path
        detect_fn = backend.detect_fn(post.max_detections)
    metrics = evaluate_split(
        cfg,
        detect_fn,
        split=split,
        out_dir=out_dir,
        max_images=max_images,
        progress=not args.no_progress,
        info=info,
        class_names=class_names,
    )
    print(f"{format_summary(metrics)} -> {out_dir}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with a one-line message)."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
