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
from typing import Optional, Sequence

import numpy as np

from rfcn_tf.cli_args import add_config_arguments

__all__ = ["build_parser", "collect_statistics", "format_statistics", "render_grid", "main",
           "training_scale_boxes", "unmatched_share", "suggest_anchors", "format_suggestion"]

# --suggest: a box matches an anchor when their IoU, centred on each other, reaches this.
_MATCH_IOU = 0.5
# --suggest: boxes smaller than this many feature cells (sqrt(area) / stride) get a warning.
_MIN_CELLS = 2.0

# An endless split (shapes train) is measured on this many images unless --max-images says.
_ENDLESS_DEFAULT = 500


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.data.inspect",
        description="Draw a grid of dataset samples with their ground-truth boxes and print "
                    "dataset statistics (images, boxes per class, box sizes in pixels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, set_example="data.voc_root=/data/BCCD",
                         config_help="e.g. shapes_tiny or bccd; default: the default preset "
                                     "(shapes_tiny)")
    parser.add_argument("--split", default=None,
                        help="split to inspect; default: data.train_split of the config")
    parser.add_argument("--num", type=int, default=16,
                        help="number of samples drawn in the grid (0: no grid)")
    parser.add_argument("--cols", type=int, default=4, help="grid columns")
    parser.add_argument("--augment", action="store_true",
                        help="draw the samples with the TRAINING transforms (shuffle, multi-scale, "
                             "flip, photometric jitter as configured) instead of the evaluation "
                             "resize")
    parser.add_argument("--max-images", type=int, default=None,
                        help="compute statistics on at most this many images; default: the whole "
                             f"split ({_ENDLESS_DEFAULT} for an endless split such as shapes train)")
    parser.add_argument("--no-stats", action="store_true", help="skip the statistics pass")
    parser.add_argument("--suggest", action="store_true",
                        help="suggest model.anchors scales and ratios covering the split's boxes "
                             "at the training scale, with the share of boxes no anchor matches "
                             "at IoU 0.5 (suggested and configured anchors)")
    parser.add_argument("--out", default="grid.png",
                        help="PNG file the grid is written to (folders are created)")
    return parser


def render_grid(data_cfg, *, split: str, num: int, cols: int, augment: bool, class_names):
    """The first `num` samples of the batched features with their boxes, tiled (uint8 RGB)."""
    import dataclasses

    from rfcn_tf.data.pipeline import build_dataset
    from rfcn_tf.visualization import draw_boxes, make_grid

    # A few samples only: caching would be thrown away half-read (and tf.data warns about it).
    data_cfg = dataclasses.replace(data_cfg, cache=False)
    dataset = build_dataset(data_cfg, split=split, training=augment, batch_size=1)
    tiles = []
    for features in dataset.take(num).as_numpy_iterator():
        height, width = features["image_shapes"][0]
        image = features["images"][0, :height, :width]
        mask = features["gt_mask"][0]
        tiles.append(draw_boxes(image, features["gt_boxes"][0][mask],
                                classes=features["gt_classes"][0][mask],
                                class_names=class_names))
    if not tiles:
        raise ValueError(f"split {split!r} yielded no images to draw")
    return make_grid(tiles, cols)


def collect_statistics(dataset, class_names, *, max_images: Optional[int] = None,
                       total: Optional[int] = None, progress: bool = True) -> dict:
    """Counts over source examples (original pixels).

    Returns:
      {"images", "empty_images", "image_min_hw", "image_max_hw", "classes": [{"name", "boxes",
      "difficult", "crowd", "size_min", "size_median", "size_max"}, ...]} (sizes are
      sqrt(width * height) in pixels, None for a class without boxes).
    """
    from tqdm import tqdm

    if max_images is not None:
        dataset = dataset.take(max_images)
        total = max_images if total is None else min(total, max_images)
    sizes = [[] for _ in class_names]
    difficult = np.zeros(len(class_names), np.int64)
    crowd = np.zeros(len(class_names), np.int64)
    images = empty = 0
    min_hw = max_hw = None
    for ex in tqdm(dataset.as_numpy_iterator(), total=total, unit="img", disable=not progress,
                   desc="statistics", file=sys.stderr):
        images += 1
        h, w = ex["image"].shape[:2]
        min_hw = (h, w) if min_hw is None else (min(min_hw[0], h), min(min_hw[1], w))
        max_hw = (h, w) if max_hw is None else (max(max_hw[0], h), max(max_hw[1], w))
        boxes = ex["boxes"].astype(np.float64) * np.array([h, w, h, w], np.float64)
        if len(boxes) == 0:
            empty += 1
        side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        for label, s, d, c in zip(ex["labels"], side, ex["is_difficult"], ex["is_crowd"]):
            sizes[label].append(s)
            difficult[label] += int(d)
            crowd[label] += int(c)
    classes = []
    for label, name in enumerate(class_names):
        values = np.asarray(sizes[label])
        classes.append({
            "name": name, "boxes": int(values.size), "difficult": int(difficult[label]),
            "crowd": int(crowd[label]),
            "size_min": float(values.min()) if values.size else None,
            "size_median": float(np.median(values)) if values.size else None,
            "size_max": float(values.max()) if values.size else None,
        })
    return {"images": images, "empty_images": empty, "image_min_hw": min_hw,
            "image_max_hw": max_hw, "classes": classes}


def format_statistics(stats: dict) -> str:
    """A markdown table of `collect_statistics`'s result, one row per class plus a total row."""
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        f"images: {stats['images']} ({stats['empty_images']} without boxes); image sizes "
        f"(h x w) from {_hw(stats['image_min_hw'])} to {_hw(stats['image_max_hw'])}",
        "",
        "| class | boxes | difficult | crowd | size min px | size median px | size max px |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in stats["classes"]:
        lines.append(f"| {c['name']} | {c['boxes']} | {c['difficult']} | {c['crowd']} | "
                     f"{fmt(c['size_min'])} | {fmt(c['size_median'])} | {fmt(c['size_max'])} |")
    total = sum(c["boxes"] for c in stats["classes"])
    lines.append(f"| (all) | {total} | {sum(c['difficult'] for c in stats['classes'])} | "
                 f"{sum(c['crowd'] for c in stats['classes'])} | | | |")
    return "\n".join(lines)


def training_scale_boxes(dataset, *, scale: int, max_size: int,
                         max_images: Optional[int] = None) -> np.ndarray:
    """float64 [N, 2]: (height, width) in pixels of every box after the training resize
    (shorter side to `scale`, longer side capped at `max_size`, as the pipeline resizes)."""
    if max_images is not None:
        dataset = dataset.take(max_images)
    rows = []
    for ex in dataset.as_numpy_iterator():
        h, w = ex["image"].shape[:2]
        factor = min(scale / max(min(h, w), 1), max_size / max(h, w, 1))
        boxes = ex["boxes"].astype(np.float64)
        rows.append(np.stack([(boxes[:, 2] - boxes[:, 0]) * h * factor,
                              (boxes[:, 3] - boxes[:, 1]) * w * factor], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 2))


def _anchor_hw(scales, ratios) -> np.ndarray:
    """[A, 2] (height, width) of anchors of sqrt(area) `scale` and height/width `ratio`."""
    return np.array([(s * np.sqrt(r), s / np.sqrt(r)) for s in scales for r in ratios],
                    np.float64).reshape(-1, 2)


def unmatched_share(boxes_hw: np.ndarray, scales, ratios, iou: float = _MATCH_IOU) -> float:
    """Share of boxes whose best anchor shape, centred on the box, has IoU < `iou`.

    The anchor grid puts an anchor every stride pixels, so a box's centre is at most half a
    stride from an anchor centre; the centred IoU is the shape's best case, the measure
    k-means anchor studies (YOLOv2 sec. 2) use.
    """
    if len(boxes_hw) == 0:
        return 0.0
    anchors = _anchor_hw(scales, ratios)
    inter = (np.minimum(boxes_hw[:, None, 0], anchors[None, :, 0])
             * np.minimum(boxes_hw[:, None, 1], anchors[None, :, 1]))
    union = (boxes_hw[:, 0] * boxes_hw[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None]
    best = (inter / np.maximum(union - inter, 1e-12)).max(axis=1)
    return float(np.mean(best < iou))


def suggest_anchors(boxes_hw: np.ndarray, *, target: float = 0.05) -> dict:
    """Anchor scales and ratios that cover `boxes_hw` (training-scale pixels).

    Scales: a geometric series from the 2nd to the 98th percentile of sqrt(area), a factor of
    2 apart (as R-FCN's 128/256/512), then sqrt(2) apart when more than `target` of the boxes
    stay unmatched. Ratios: the 10th, 50th and 90th percentiles of height/width (rounded,
    duplicates merged).

    Returns:
      {"scales", "ratios", "unmatched"} (unmatched: the share at IoU 0.5).
    """
    if len(boxes_hw) == 0:
        raise ValueError("the split has no boxes to fit anchors to")
    sizes = np.sqrt(boxes_hw[:, 0] * boxes_hw[:, 1])
    aspect = boxes_hw[:, 0] / np.maximum(boxes_hw[:, 1], 1e-12)
    low, high = np.percentile(sizes, [2, 98])
    ratios = sorted({round(float(r), 2) for r in np.percentile(aspect, [10, 50, 90])})
    best = None
    for step in (2.0, 2.0 ** 0.5):
        count = max(1, int(np.ceil(np.log(high / low) / np.log(step) - 1e-9)) + 1)
        scales = [round(float(v), 1) for v in np.geomspace(low, high, count)]
        result = {"scales": scales, "ratios": ratios,
                  "unmatched": unmatched_share(boxes_hw, scales, ratios)}
        best = result
        if result["unmatched"] <= target:
            break
    return best


def format_suggestion(boxes_hw: np.ndarray, suggestion: dict, *, configured: dict, scale: int,
                      stride: int) -> str:
    """The --suggest report: suggested anchors, both unmatched shares, small-box warning."""
    sizes = np.sqrt(boxes_hw[:, 0] * boxes_hw[:, 1])
    lines = [
        f"anchors for {len(boxes_hw)} boxes at the training scale {scale} px: "
        f"sqrt(area) p2/p50/p98 = "
        f"{' / '.join(f'{v:.1f}' for v in np.percentile(sizes, [2, 50, 98]))} px",
        f"suggested: --set model.anchors.scales={suggestion['scales']} "
        f"--set model.anchors.ratios={suggestion['ratios']}",
        f"unmatched at IoU {_MATCH_IOU}: suggested {100 * suggestion['unmatched']:.1f}%, "
        f"configured (scales {configured['scales']}, ratios {configured['ratios']}) "
        f"{100 * configured['unmatched']:.1f}%",
    ]
    small = float(np.mean(sizes < _MIN_CELLS * stride))
    if small > 0:
        lines.append(
            f"warning: {100 * small:.1f}% of the boxes are smaller than {_MIN_CELLS:g} feature "
            f"cells ({_MIN_CELLS * stride:g} px at stride {stride}): consider "
            f"model.head.pooling_mode: bilinear, a larger data.scales, or a smaller stride "
            f"where the backbone allows it")
    return "\n".join(lines)


def _hw(hw) -> str:
    return "-" if hw is None else f"{hw[0]} x {hw[1]}"


def run(args: argparse.Namespace) -> str:
    """Does the work; returns the one-line summary."""
    from rfcn_tf.config import load_config
    from rfcn_tf.data.pipeline import build_source

    if args.num < 0:
        raise ValueError(f"--num must be >= 0, got {args.num}")
    if args.cols < 1:
        raise ValueError(f"--cols must be >= 1, got {args.cols}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    config = load_config(args.config, args.overrides)
    data_cfg = config.data
    split = args.split or data_cfg.train_split
    dataset, info = build_source(data_cfg, split=split)
    parts = [f"{data_cfg.source} split {split!r}: {info.num_classes} classes"]

    if not args.no_stats:
        max_images = args.max_images
        if max_images is None and info.num_examples is None:
            max_images = _ENDLESS_DEFAULT
        stats = collect_statistics(dataset, info.class_names, max_images=max_images,
                                   total=info.num_examples)
        print(format_statistics(stats), flush=True)
        parts.append(f"{stats['images']} images, "
                     f"{sum(c['boxes'] for c in stats['classes'])} boxes")
    if args.suggest:
        from rfcn_tf.data.pipeline import evaluation_scale

        scale = evaluation_scale(data_cfg.scales)
        max_images = args.max_images
        if max_images is None and info.num_examples is None:
            max_images = _ENDLESS_DEFAULT
        boxes_hw = training_scale_boxes(dataset, scale=scale, max_size=int(data_cfg.max_size),
                                        max_images=max_images)
        suggestion = suggest_anchors(boxes_hw)
        from rfcn_tf.data.anchor_stats import resolve_auto_anchors

        # model.anchors "auto": the numbers training would fit to these boxes.
        anchors = resolve_auto_anchors(config, boxes_hw=boxes_hw).model.anchors
        configured = {"scales": list(anchors.scales), "ratios": list(anchors.ratios),
                      "unmatched": unmatched_share(boxes_hw, anchors.scales, anchors.ratios)}
        stride = int(getattr(config.model.backbone, "feature_stride", 16))
        print(format_suggestion(boxes_hw, suggestion, configured=configured, scale=scale,
                                stride=stride), flush=True)
        parts.append(f"anchors suggested ({100 * suggestion['unmatched']:.1f}% unmatched)")
    if args.num > 0:
        from PIL import Image

        grid = render_grid(data_cfg, split=split, num=args.num, cols=args.cols,
                           augment=args.augment, class_names=info.class_names)
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(grid).save(args.out)
        parts.append(f"grid of {args.num} samples ({grid.shape[1]}x{grid.shape[0]}) -> "
                     f"{args.out}")
    return "inspected " + "; ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with one message)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import tensorflow as tf

    from rfcn_tf.config import ConfigError
    from rfcn_tf.data.errors import DataError

    try:
        summary = run(args)
    except (ConfigError, DataError, ValueError, OSError, tf.errors.OpError) as exc:
        message = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1
    print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
