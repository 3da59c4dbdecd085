"""Runs a detector over an evaluation split and reports COCO and VOC metrics.

The one place where detections leave the resized-image frame: boxes the model returns in pixels
of the resized input image become ORIGINAL image pixels (boxes * original_shape / image_shape),
the frame of docs/INTERFACES.md's per-image ground-truth and detection dicts that
`coco_metrics` and `voc_metrics` consume.

Shape shorthand:
    B  images per batch          M  detections per image (padded; `num_detections` are real)
    G  padded ground-truth boxes per image
    Hp, Wp  padded batch image size; (h, w) = image_shapes (resized, unpadded);
    (H0, W0) = original_shapes

Outputs written to `out_dir` (when given):
    metrics.json      the returned metrics dict (NaN written as null)
    metrics.md        markdown tables: overall numbers, then one row per class
    pr_curves/NN_<class>.png   precision-recall curve per class at IoU 0.5 (the VOC ranked list)
    detections.json   every kept detection in COCO results format
                      [{"image_id", "category_id", "bbox": [x, y, w, h] original pixels, "score"}]
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rfcn_tf.evaluation.coco_metrics import COCO_STAT_NAMES, build_coco_results, evaluate_coco
from rfcn_tf.evaluation.voc_metrics import evaluate_voc

__all__ = [
    "DetectFn",
    "collect_detections",
    "compute_metrics",
    "dataset_description",
    "evaluate_detector",
    "evaluate_split",
    "format_summary",
    "metrics_markdown",
    "to_original_pixels",
    "write_outputs",
]

# detect_fn(images uint8 [B, Hp, Wp, 3], image_shapes int32 [B, 2]) -> detections dict
DetectFn = Callable[[Any, Any], Mapping[str, Any]]

_DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
_FEATURE_KEYS = (
    "images",
    "image_shapes",
    "original_shapes",
    "image_ids",
    "gt_boxes",
    "gt_classes",
    "gt_mask",
)


def _numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def to_original_pixels(
    boxes_yxyx: np.ndarray, image_shape: Sequence[float], original_shape: Sequence[float]
) -> np.ndarray:
    """Boxes in resized-image pixels -> original-image pixels, clipped to the original image.

    The NumPy face of `rfcn_tf.inference.preprocess.boxes_to_original` (the one rescale every
    consumer shares), computed in float64 for the metrics.

    Args:
        boxes_yxyx: `[N, 4]` yxyx pixels of the resized (unpadded) image.
        image_shape: `(h, w)` of the resized image (`image_shapes`).
        original_shape: `(H0, W0)` of the original image (`original_shapes`).

    Returns:
        float64 `[N, 4]` yxyx in original pixels: y * H0 / h, x * W0 / w, clipped to [0, H0] x
        [0, W0].
    """
    h, w = (float(v) for v in image_shape)
    h0, w0 = (float(v) for v in original_shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_shape must be positive (height, width), got {tuple(image_shape)}")
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    scale = np.array([h0 / h, w0 / w, h0 / h, w0 / w])
    limit = np.array([h0, w0, h0, w0])
    return np.clip(boxes * scale, 0.0, limit)


def collect_detections(
    detect_fn: DetectFn,
    dataset: Iterable[Mapping[str, Any]],
    *,
    max_images: int | None = None,
    score_threshold: float | None = None,
    progress: bool = True,
    num_images: int | None = None,
) -> tuple[list[dict], list[dict], dict]:
    """One pass of `detect_fn` over batched features; per-image ground truth and detections.

    Args:
        detect_fn: `(images, image_shapes) -> {"detection_boxes": [B, M, 4] yxyx resized-image
            pixels, "detection_scores": [B, M], "detection_classes": [B, M] int 1..C,
            "num_detections": [B]}` (tensors or arrays), e.g. `RFCN.detect`.
        dataset: iterable of batched-feature dicts (docs/INTERFACES.md "Batched features"), one
            pass;
            a row whose `image_ids` is negative is batch padding and skipped.
        max_images: stop after this many images (None: the whole dataset).
        score_threshold: drop detections scoring below it (None: keep all `detect_fn` returns).
        progress: show a tqdm progress bar (stderr).
        num_images: images expected (progress bar total); None = unknown.

    Returns:
        `(groundtruths, detections, timing)`: per-image dicts in original pixels
        (docs/INTERFACES.md "Evaluation"), and `{"num_images", "detect_seconds",
        "images_per_second"}` where detect_seconds sums the wall time of `detect_fn` calls,
        the first (tracing) call included.
    """
    from tqdm.auto import tqdm

    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    total = num_images
    if max_images is not None:
        total = max_images if total is None else min(total, max_images)
    groundtruths: list[dict] = []
    detections: list[dict] = []
    detect_seconds = 0.0
    bar = tqdm(
        total=total,
        unit="img",
        desc="evaluate",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for features in dataset:
            missing = [k for k in _FEATURE_KEYS if k not in features]
            if missing:
                raise ValueError(
                    f"dataset element lacks {missing}; batched features need {list(_FEATURE_KEYS)} "
                    f"(got {sorted(features)})"
                )
            start = time.perf_counter()
            out = detect_fn(features["images"], features["image_shapes"])
            missing = [k for k in _DETECTION_KEYS if k not in out]
            if missing:
                raise ValueError(f"detect_fn output lacks {missing} (got {sorted(out)})")
            out = {k: _numpy(out[k]) for k in _DETECTION_KEYS}
            detect_seconds += time.perf_counter() - start

            image_shapes = _numpy(features["image_shapes"])
            original_shapes = _numpy(features["original_shapes"])
            image_ids = _numpy(features["image_ids"]).astype(np.int64)
            gt_boxes = _numpy(features["gt_boxes"])
            gt_classes = _numpy(features["gt_classes"])
            gt_mask = _numpy(features["gt_mask"]).astype(bool)
            gt_difficult = (
                _numpy(features["gt_difficult"]).astype(bool)
                if "gt_difficult" in features
                else np.zeros_like(gt_mask)
            )
            gt_crowd = (
                _numpy(features["gt_is_crowd"]).astype(bool)
                if "gt_is_crowd" in features
                else np.zeros_like(gt_mask)
            )
            batch = image_ids.shape[0]
            if out["detection_boxes"].shape[0] != batch:
                raise ValueError(
                    f"detect_fn returned {out['detection_boxes'].shape[0]} images of detections "
                    f"for a batch of {batch}"
                )
            for b in range(batch):
                if image_ids[b] < 0:
                    continue
                if max_images is not None and len(groundtruths) >= max_images:
                    break
                shape, orig = image_shapes[b], original_shapes[b]
                mask = gt_mask[b]
                groundtruths.append(
                    {
                        "image_id": int(image_ids[b]),
                        "boxes": to_original_pixels(gt_boxes[b][mask], shape, orig),
                        "classes": gt_classes[b][mask].astype(np.int64),
                        "difficult": gt_difficult[b][mask],
                        "is_crowd": gt_crowd[b][mask],
                        "height": int(orig[0]),
                        "width": int(orig[1]),
                    }
                )
                n = int(out["num_detections"][b])
                scores = out["detection_scores"][b, :n].astype(np.float64)
                keep = (
                    np.ones(n, bool)
                    if score_threshold is None
                    else scores >= float(score_threshold)
                )
                detections.append(
                    {
                        "image_id": int(image_ids[b]),
                        "boxes": to_original_pixels(
                            out["detection_boxes"][b, :n][keep], shape, orig
                        ),
                        "scores": scores[keep],
                        "classes": out["detection_classes"][b, :n][keep].astype(np.int64),
                    }
                )
                bar.update(1)
            if max_images is not None and len(groundtruths) >= max_images:
                break
    finally:
        bar.close()
    count = len(groundtruths)
    timing = {
        "num_images": count,
        "detect_seconds": detect_seconds,
        "images_per_second": count / detect_seconds if detect_seconds > 0 else math.nan,
    }
    return groundtruths, detections, timing


def compute_metrics(
    groundtruths: Sequence[Mapping],
    detections: Sequence[Mapping],
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> tuple[dict, dict]:
    """COCO (pycocotools), VOC07 11-point and VOC2010+ all-point metrics of per-image dicts.

    Args:
        groundtruths, detections: per-image dicts in original pixels (docs/INTERFACES.md).
        class_names: C names (`class_names[0]` is class 1).
        category_ids: optional COCO category ids per class (for COCO sources).

    Returns:
        `(metrics, pr_curves)`. `metrics` (JSON-ready apart from NaN) holds
            "num_images", "num_groundtruths", "num_detections": ints;
            "coco": the 12 COCO numbers ("AP", "AP50", ..., "ARl");
            "voc07": {"mAP"}, "voc2010": {"mAP"} (IoU 0.5);
            "per_class": {name: {"num_groundtruths" (non-difficult), "num_detections", "AP",
                "AP50" (COCO), "AP_voc07", "AP_voc2010"}} (NaN: no ground truth).
        `pr_curves`: {name: (recall float64 [D], precision float64 [D])} at IoU 0.5.
    """
    class_names = [str(n) for n in class_names]
    num_classes = len(class_names)
    coco = evaluate_coco(
        groundtruths, detections, class_names=class_names, category_ids=category_ids
    )
    voc07 = evaluate_voc(
        groundtruths,
        detections,
        num_classes=num_classes,
        use_07_metric=True,
        class_names=class_names,
    )
    voc10 = evaluate_voc(
        groundtruths,
        detections,
        num_classes=num_classes,
        use_07_metric=False,
        class_names=class_names,
    )
    per_class = {
        name: {
            "num_groundtruths": voc10["num_groundtruths"][name],
            "num_detections": voc10["num_detections"][name],
            "AP": coco["per_class_AP"][name],
            "AP50": coco["per_class_AP50"][name],
            "AP_voc07": voc07["ap"][name],
            "AP_voc2010": voc10["ap"][name],
        }
        for name in class_names
    }
    metrics = {
        "num_images": len(groundtruths),
        "num_groundtruths": int(sum(np.asarray(g["classes"]).size for g in groundtruths)),
        "num_detections": int(sum(np.asarray(d["scores"]).size for d in detections)),
        "coco": {name: coco[name] for name in COCO_STAT_NAMES},
        "voc07": {"mAP": voc07["mAP"]},
        "voc2010": {"mAP": voc10["mAP"]},
        "per_class": per_class,
    }
    curves = {name: (voc10["recall"][name], voc10["precision"][name]) for name in class_names}
    return metrics, curves


def _json_ready(x):
    """NaN/inf -> None, NumPy scalars/arrays -> Python (strict JSON has no NaN)."""
    if isinstance(x, Mapping):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_ready(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


_OVERALL_ROWS = (
    ("AP", "coco", "AP", "COCO AP, IoU .50:.95, all areas, 100 dets"),
    ("AP50", "coco", "AP50", "COCO AP, IoU .50"),
    ("AP75", "coco", "AP75", "COCO AP, IoU .75"),
    ("APs", "coco", "APs", "COCO AP, small (< 32^2 px)"),
    ("APm", "coco", "APm", "COCO AP, medium"),
    ("APl", "coco", "APl", "COCO AP, large (> 96^2 px)"),
    ("AR1", "coco", "AR1", "COCO AR, 1 det per image"),
    ("AR10", "coco", "AR10", "COCO AR, 10 dets"),
    ("AR100", "coco", "AR100", "COCO AR, 100 dets"),
    ("ARs", "coco", "ARs", "COCO AR, small"),
    ("ARm", "coco", "ARm", "COCO AR, medium"),
    ("ARl", "coco", "ARl", "COCO AR, large"),
    ("mAP VOC07", "voc07", "mAP", "VOC2007 11-point AP, IoU .5, difficult ignored"),
    ("mAP VOC2010", "voc2010", "mAP", "VOC2010+ all-point AP, IoU .5, difficult ignored"),
)


def metrics_markdown(metrics: Mapping) -> str:
    """The metrics dict as markdown: an info list, the overall table, the per-class table."""
    lines = ["# Evaluation", ""]
    info = dict(metrics.get("info") or {})
    info.setdefault("images", metrics.get("num_images"))
    info.setdefault("ground-truth boxes", metrics.get("num_groundtruths"))
    info.setdefault("detections", metrics.get("num_detections"))
    for key, value in info.items():
        lines.append(f"- {key}: {_fmt(value) if isinstance(value, float) else value}")
    lines += ["", "## Overall", "", "| metric | value | definition |", "|---|---:|---|"]
    for label, group, key, definition in _OVERALL_ROWS:
        lines.append(f"| {label} | {_fmt(metrics[group][key])} | {definition} |")
    lines += [
        "",
        "## Per class",
        "",
        "| class | GT (non-difficult) | detections | AP | AP50 | AP VOC07 | AP VOC2010 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in metrics["per_class"].items():
        cells = [
            _fmt(row[k])
            for k in ("num_groundtruths", "num_detections", "AP", "AP50", "AP_voc07", "AP_voc2010")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("n/a: no ground truth for the class (excluded from the means).")
    return "\n".join(lines) + "\n"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def _plot_pr(
    path: str,
    name: str,
    recall: np.ndarray,
    precision: np.ndarray,
    ap07: float,
    ap10: float,
    num_gt: int,
) -> None:
    # The object-oriented API with an Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if num_gt > 0 and recall.size:
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        ax.plot(recall, precision, color="0.6", linewidth=1, label="precision")
        ax.step(
            np.concatenate([[0.0], recall]),
            np.concatenate([[envelope[0]], envelope]),
            where="pre",
            color="C0",
            linewidth=1.5,
            label="interpolated",
        )
        ax.legend(loc="lower left", fontsize=8)
    elif num_gt == 0:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.set_title(
        f"{name} (IoU 0.5, {num_gt} GT)\nAP VOC2010 {_fmt(ap10)}, VOC07 {_fmt(ap07)}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_outputs(
    out_dir: str,
    metrics: Mapping,
    *,
    pr_curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    coco_results: list[dict],
) -> dict[str, str]:
    """Writes metrics.json, metrics.md, pr_curves/*.png and detections.json under `out_dir`.

    Args:
        out_dir: folder (created if needed).
        metrics: from `compute_metrics` (plus optional "info"/"timing").
        pr_curves: from `compute_metrics`.
        coco_results: detections in COCO results format (`build_coco_results`).

    Returns:
        {"metrics_json", "metrics_md", "detections_json", "pr_curves_dir"}: the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "metrics_json": os.path.join(out_dir, "metrics.json"),
        "metrics_md": os.path.join(out_dir, "metrics.md"),
        "detections_json": os.path.join(out_dir, "detections.json"),
        "pr_curves_dir": os.path.join(out_dir, "pr_curves"),
    }
    with open(paths["metrics_json"], "w", encoding="utf-8") as f:
        json.dump(_json_ready(metrics), f, indent=2, allow_nan=False)
        f.write("\n")
    with open(paths["metrics_md"], "w", encoding="utf-8") as f:
        f.write(metrics_markdown(metrics))
    with open(paths["detections_json"], "w", encoding="utf-8") as f:
        json.dump(coco_results, f)
    os.makedirs(paths["pr_curves_dir"], exist_ok=True)
    for index, (name, (recall, precision)) in enumerate(pr_curves.items(), start=1):
        row = metrics["per_class"][name]
        _plot_pr(
            os.path.join(paths["pr_curves_dir"], f"{index:02d}_{_safe_name(name)}.png"),
            name,
            np.asarray(recall),
            np.asarray(precision),
            row["AP_voc07"],
            row["AP_voc2010"],
            int(row["num_groundtruths"]),
        )
    return paths


def format_summary(metrics: Mapping) -> str:
    """One line: images, COCO AP / AP50 / AP75, VOC07 and VOC2010 mAP, speed if known."""
    coco = metrics["coco"]
    text = (
        f"{metrics['num_images']} images, {metrics['num_detections']} detections: "
        f"AP {_fmt(coco['AP'])} | AP50 {_fmt(coco['AP50'])} | AP75 {_fmt(coco['AP75'])} | "
        f"mAP VOC07 {_fmt(metrics['voc07']['mAP'])} | "
        f"VOC2010 {_fmt(metrics['voc2010']['mAP'])}"
    )
    timing = metrics.get("timing")
    if timing and timing.get("images_per_second") and math.isfinite(timing["images_per_second"]):
        text += f" | {timing['images_per_second']:.2f} img/s"
    return text


def evaluate_detector(
    detect_fn: DetectFn,
    dataset: Iterable[Mapping[str, Any]],
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    out_dir: str | None = None,
    max_images: int | None = None,
    progress: bool = True,
    score_threshold: float | None = None,
    num_images: int | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict:
    """Evaluates `detect_fn` on one pass of `dataset`; optionally writes the report files.

    Args:
        detect_fn: `(images uint8 [B, Hp, Wp, 3], image_shapes int32 [B, 2]) -> detections dict`
            (docs/INTERFACES.md `detect`: boxes yxyx in resized-image pixels, classes 1..C).
        dataset: batched features (docs/INTERFACES.md), eval split, finite (one pass is taken).
        class_names: C names, `class_names[0]` is class 1 (`DatasetInfo.class_names`).
        category_ids: COCO category id per class (`DatasetInfo.category_ids`) or None (1..C).
        out_dir: where to write metrics.json, metrics.md, pr_curves/*.png, detections.json;
            None writes nothing.
        max_images: evaluate at most this many images.
        progress: tqdm progress bar on stderr.
        score_threshold: drop detections below this score first (None keeps all).
        num_images: images in the split, for the progress bar total (None: unknown).
        info: extra facts for the report (checkpoint, config, split), stored under "info".

    Returns:
        the metrics dict of `compute_metrics`, plus "timing" ({"num_images", "detect_seconds",
        "images_per_second"}) and "info" when given.

    Raises:
        ValueError: an empty dataset (no image evaluated), or malformed features/detections.
    """
    groundtruths, detections, timing = collect_detections(
        detect_fn,
        dataset,
        max_images=max_images,
        score_threshold=score_threshold,
        progress=progress,
        num_images=num_images,
    )
    if not groundtruths:
        raise ValueError("the evaluation dataset yielded no images: nothing to evaluate")
    metrics, curves = compute_metrics(
        groundtruths, detections, class_names=class_names, category_ids=category_ids
    )
    metrics["timing"] = timing
    if info:
        metrics["info"] = dict(info)
    if out_dir is not None:
        results = build_coco_results(
            detections, num_classes=len(class_names), category_ids=category_ids
        )
        write_outputs(out_dir, metrics, pr_curves=curves, coco_results=results)
    return metrics


def dataset_description(cfg, split: str) -> str:
    """ "the dataset (<source>, split '<split>')" for messages."""
    source = cfg.data.source
    if source == "tfds":
        source = f"tfds '{cfg.data.tfds_name}'"
    return f"the dataset ({source}, split '{split}')"


def evaluate_split(
    cfg,
    detect_fn: DetectFn,
    *,
    split: str,
    out_dir: str | None,
    max_images: int | None = None,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Evaluates `detect_fn` on a split of the configured dataset (the evaluate CLI's and the
    end-of-training evaluation's one path).

    Args:
        cfg: the config tree (`data.*` builds the split's batched features, resized as
            evaluation resizes; `eval.batch_size`, `eval.score_threshold`).
        detect_fn: as `evaluate_detector`'s (resized-image pixels in).
        split: dataset split.
        out_dir: where the reports go (None: nowhere).
        max_images, progress, info: as `evaluate_detector`'s.
        class_names: the model's class names, checked against the split's (None: no check).

    Raises:
        ValueError: the model's class count differs from the dataset's (message names both).
    """
    from rfcn_tf.data.pipeline import build_dataset, source_info

    split_info = source_info(cfg.data, split=split)
    names = list(split_info.class_names)
    if class_names is not None and len(class_names) != len(names):
        raise ValueError(
            f"the model has {len(class_names)} classes ({', '.join(list(class_names)[:5])}"
            f"{'...' if len(class_names) > 5 else ''}) but {dataset_description(cfg, split)} "
            f"has {len(names)} ({', '.join(names[:5])}{'...' if len(names) > 5 else ''})"
        )
    dataset = build_dataset(cfg.data, split=split, training=False, batch_size=cfg.eval.batch_size)
    return evaluate_detector(
        detect_fn,
        dataset,
        class_names=names,
        category_ids=split_info.category_ids,
        out_dir=out_dir,
        max_images=max_images,
        progress=progress,
        score_threshold=cfg.eval.score_threshold,
        num_images=split_info.num_examples,
        info=info,
    )
