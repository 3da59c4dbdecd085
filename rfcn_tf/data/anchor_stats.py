"""``model.anchors.scales: auto`` (and ``ratios: auto``): anchors fitted to the training split.

At the start of training (``rfcn_tf.training.load_run_config``, next to the epochs schedule),
before ``--print-config`` and the run's ``config.yaml``, an ``auto`` field is replaced by the
anchors ``python -m rfcn_tf.data.inspect --suggest`` prints for the training split: the boxes
of ``data.train_split`` (at most ``AUTO_MAX_IMAGES`` images, in source order) resized as
evaluation resizes (shorter side the median of ``data.scales``, longer side <= ``data.max_size``),
then ``suggest_anchors`` below (scales: a geometric series over the 2nd..98th
percentile of sqrt(area); ratios: percentiles of height/width). The run folder's config.yaml
records the concrete numbers, so evaluation, export, ``rfcn_tf.load`` and a resumed run use
exactly these anchors (a resume recomputes them from the same split and gets the same list).

Matching is measured as the RPN's best case: each box against every anchor shape centred on
it (shape-only IoU, the standard measure of anchor studies); the real grid offsets anchors by
up to half a stride, which lowers the IoU of small boxes a little.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

__all__ = [
    "AUTO",
    "AUTO_MAX_IMAGES",
    "format_suggestion",
    "resolve_auto_anchors",
    "suggest_anchors",
    "suggestion_report",
    "training_scale_boxes",
    "unmatched_share",
    "uses_auto_anchors",
]

logger = logging.getLogger("rfcn_tf.train")

AUTO = "auto"
# Images read to fit the anchors (decoded once, before training): enough for stable
# percentiles, bounded for COCO-sized splits.
AUTO_MAX_IMAGES = 2000
# A box matches an anchor when their IoU, centred on each other, reaches this.
_MATCH_IOU = 0.5
# Boxes smaller than this many feature cells (sqrt(area) / stride) get a warning.
_MIN_CELLS = 2.0


def uses_auto_anchors(anchors_cfg) -> bool:
    """True when ``model.anchors.scales`` or ``.ratios`` is ``"auto"``."""
    return anchors_cfg.scales == AUTO or anchors_cfg.ratios == AUTO


def resolve_auto_anchors(cfg, *, boxes_hw=None):
    """``cfg`` with ``model.anchors`` ``auto`` fields replaced by numbers from the training split.

    Args:
      cfg: the config tree; returned unchanged when no anchor field is ``auto``.
      boxes_hw: float [N, 2] (height, width) of the training boxes at the training scale;
        None reads them from ``data.train_split`` (``training_scale_boxes``).

    Returns:
      A new ``Config`` (the input is not modified).

    Raises:
      ConfigError: the training split has no boxes to fit anchors to.
    """
    anchors = cfg.model.anchors
    if not uses_auto_anchors(anchors):
        return cfg
    from rfcn_tf.errors import ConfigError

    if boxes_hw is None:
        from rfcn_tf.data.pipeline import build_source, evaluation_scale

        dataset, _ = build_source(cfg.data, split=cfg.data.train_split)
        boxes_hw = training_scale_boxes(
            dataset,
            scale=evaluation_scale(cfg.data.scales),
            max_size=int(cfg.data.max_size),
            max_images=AUTO_MAX_IMAGES,
        )
    boxes_hw = np.asarray(boxes_hw, np.float64).reshape(-1, 2)
    if len(boxes_hw) == 0:
        raise ConfigError(
            f"model.anchors {AUTO!r} needs boxes to fit to, but training split "
            f"{cfg.data.train_split!r} has none: set model.anchors.scales and "
            f"ratios to numbers"
        )
    suggestion = suggest_anchors(boxes_hw)
    scales = suggestion["scales"] if anchors.scales == AUTO else list(anchors.scales)
    ratios = suggestion["ratios"] if anchors.ratios == AUTO else list(anchors.ratios)
    scales = [float(s) for s in scales]
    ratios = [float(r) for r in ratios]
    unmatched = unmatched_share(boxes_hw, scales, ratios)
    logger.info(
        "model.anchors from %d boxes of split %r: scales=%s%s, ratios=%s%s; %.1f%% of "
        "the boxes match no anchor at IoU 0.5 (anchor centred on the box)",
        len(boxes_hw),
        cfg.data.train_split,
        scales,
        " (auto)" if anchors.scales == AUTO else "",
        ratios,
        " (auto)" if anchors.ratios == AUTO else "",
        100 * unmatched,
    )
    model = dataclasses.replace(
        cfg.model, anchors=dataclasses.replace(anchors, scales=scales, ratios=ratios)
    )
    return dataclasses.replace(cfg, model=model)


def training_scale_boxes(
    dataset, *, scale: int, max_size: int, max_images: int | None = None
) -> np.ndarray:
    """float64 [N, 2]: (height, width) in pixels of every box after the training resize
    (shorter side to `scale`, longer side capped at `max_size`, as the pipeline resizes)."""
    if max_images is not None:
        dataset = dataset.take(max_images)
    rows = []
    for ex in dataset.as_numpy_iterator():
        h, w = ex["image"].shape[:2]
        factor = min(scale / max(min(h, w), 1), max_size / max(h, w, 1))
        boxes = ex["boxes"].astype(np.float64)
        rows.append(
            np.stack(
                [
                    (boxes[:, 2] - boxes[:, 0]) * h * factor,
                    (boxes[:, 3] - boxes[:, 1]) * w * factor,
                ],
                axis=1,
            )
        )
    return np.concatenate(rows) if rows else np.zeros((0, 2))


def _anchor_hw(scales, ratios) -> np.ndarray:
    """[A, 2] (height, width) of anchors of sqrt(area) `scale` and height/width `ratio`."""
    return np.array(
        [(s * np.sqrt(r), s / np.sqrt(r)) for s in scales for r in ratios], np.float64
    ).reshape(-1, 2)


def unmatched_share(boxes_hw: np.ndarray, scales, ratios, iou: float = _MATCH_IOU) -> float:
    """Share of boxes whose best anchor shape, centred on the box, has IoU < `iou`.

    The anchor grid puts an anchor every stride pixels, so a box's centre is at most half a
    stride from an anchor centre; the centred IoU is the shape's best case, the measure
    k-means anchor studies (YOLOv2 sec. 2) use.
    """
    if len(boxes_hw) == 0:
        return 0.0
    anchors = _anchor_hw(scales, ratios)
    inter = np.minimum(boxes_hw[:, None, 0], anchors[None, :, 0]) * np.minimum(
        boxes_hw[:, None, 1], anchors[None, :, 1]
    )
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
    for step in (2.0, 2.0**0.5):
        count = max(1, int(np.ceil(np.log(high / low) / np.log(step) - 1e-9)) + 1)
        scales = [round(float(v), 1) for v in np.geomspace(low, high, count)]
        result = {
            "scales": scales,
            "ratios": ratios,
            "unmatched": unmatched_share(boxes_hw, scales, ratios),
        }
        best = result
        if result["unmatched"] <= target:
            break
    return best


def format_suggestion(
    boxes_hw: np.ndarray, suggestion: dict, *, configured: dict, scale: int, stride: int
) -> str:
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
            f"where the backbone allows it"
        )
    return "\n".join(lines)


def suggestion_report(cfg, dataset, *, max_images: int | None = None) -> tuple[str, float]:
    """What ``inspect --suggest`` prints for the source examples `dataset` under `cfg`.

    The boxes are measured at the training scale; the report gives the suggested anchors and
    the unmatched share of both the suggested and the configured ones (``auto`` fields are the
    numbers training would fit to these boxes), and warns about boxes under 2 feature cells.

    Returns:
        (the report text, the suggested anchors' unmatched share).
    """
    from rfcn_tf.data.pipeline import evaluation_scale

    scale = evaluation_scale(cfg.data.scales)
    boxes_hw = training_scale_boxes(
        dataset, scale=scale, max_size=int(cfg.data.max_size), max_images=max_images
    )
    suggestion = suggest_anchors(boxes_hw)
    anchors = resolve_auto_anchors(cfg, boxes_hw=boxes_hw).model.anchors
    configured = {
        "scales": list(anchors.scales),
        "ratios": list(anchors.ratios),
        "unmatched": unmatched_share(boxes_hw, anchors.scales, anchors.ratios),
    }
    stride = int(getattr(cfg.model.backbone, "feature_stride", 16))
    text = format_suggestion(
        boxes_hw, suggestion, configured=configured, scale=scale, stride=stride
    )
    return text, suggestion["unmatched"]
