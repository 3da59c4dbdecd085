"""What `python -m rfcn_tf.data.inspect` shows: a grid of samples with their boxes, and dataset
statistics (images, empty images, image sizes; per class boxes, difficult and crowd boxes and the
box size sqrt(width * height) in ORIGINAL pixels, min / median / max).

Box format: sources' normalized yxyx (rfcn_tf/data/sources/base.py); statistics are in pixels
of the original images.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["collect_statistics", "format_statistics", "render_grid"]


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
        tiles.append(
            draw_boxes(
                image,
                features["gt_boxes"][0][mask],
                classes=features["gt_classes"][0][mask],
                class_names=class_names,
            )
        )
    if not tiles:
        raise ValueError(f"split {split!r} yielded no images to draw")
    return make_grid(tiles, cols)


def collect_statistics(
    dataset,
    class_names,
    *,
    max_images: int | None = None,
    total: int | None = None,
    progress: bool = True,
) -> dict:
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
    for ex in tqdm(
        dataset.as_numpy_iterator(),
        total=total,
        unit="img",
        disable=not progress,
        desc="statistics",
        file=sys.stderr,
    ):
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
        classes.append(
            {
                "name": name,
                "boxes": int(values.size),
                "difficult": int(difficult[label]),
                "crowd": int(crowd[label]),
                "size_min": float(values.min()) if values.size else None,
                "size_median": float(np.median(values)) if values.size else None,
                "size_max": float(values.max()) if values.size else None,
            }
        )
    return {
        "images": images,
        "empty_images": empty,
        "image_min_hw": min_hw,
        "image_max_hw": max_hw,
        "classes": classes,
    }


def format_statistics(stats: dict) -> str:
    """A markdown table of `collect_statistics`'s result, one row per class plus a total row."""
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    lines = [
        f"images: {stats['images']} ({stats['empty_images']} without boxes); image sizes "
        f"(h x w) from {_hw(stats['image_min_hw'])} to {_hw(stats['image_max_hw'])}",
        "",
        "| class | boxes | difficult | crowd | size min px | size median px | size max px |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in stats["classes"]:
        lines.append(
            f"| {c['name']} | {c['boxes']} | {c['difficult']} | {c['crowd']} | "
            f"{fmt(c['size_min'])} | {fmt(c['size_median'])} | {fmt(c['size_max'])} |"
        )
    total = sum(c["boxes"] for c in stats["classes"])
    lines.append(
        f"| (all) | {total} | {sum(c['difficult'] for c in stats['classes'])} | "
        f"{sum(c['crowd'] for c in stats['classes'])} | | | |"
    )
    return "\n".join(lines)


def _hw(hw) -> str:
    return "-" if hw is None else f"{hw[0]} x {hw[1]}"
