"""COCO detection metrics through pycocotools, built in memory (no JSON files).

R-FCN sec. 4.2 reports COCO AP (IoU .5:.95) and AP@0.5; this adapter computes the 12 standard
`COCOeval.stats` numbers plus per-class AP and AP50 from the per-image dicts of
docs/INTERFACES.md ("Evaluation"). It is the only place where boxes become COCO `xywh`
(docs/ARCHITECTURE.md, "Boxes, images, classes").

Shape shorthand:
    N  ground-truth boxes of one image       M  detections of one image
    C  classes (without background)

Inputs (boxes yxyx in ORIGINAL image pixels, continuous coordinates):
    ground truth: {"image_id": int, "boxes": [N, 4], "classes": [N] int 1..C,
                   "difficult": [N] bool, "is_crowd": [N] bool, "height": int, "width": int,
                   optional "area": [N] float (COCO's segment area; default box area)}
    detections:   {"image_id": int, "boxes": [M, 4], "scores": [M], "classes": [M] int 1..C}

Choices (documented here because pycocotools has no notion of them):
    - Class id c (1..C) becomes COCO category id `category_ids[c - 1]` (the COCO source's
      `DatasetInfo.category_ids`), else c itself.
    - `area` decides the small / medium / large buckets. COCO's annotations carry the
      segmentation area; our examples carry boxes only, so without an "area" key the box area
      w * h is used (APs/APm/APl then differ slightly from the official server's).
    - VOC "difficult" boxes are passed as `iscrowd=1`: pycocotools' only way to ignore a box
      (detections matching it are neither TP nor FP, like the VOC devkit). Note that crowd
      matching uses intersection over detection area.
    - A class without (non-crowd) ground truth gets per-class AP NaN (pycocotools' -1); an
      overall number pycocotools reports as -1 (nothing to evaluate) becomes NaN.
    - Zero detections are valid (every AP and AR is then 0 where ground truth exists).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rfcn_tf.evaluation.inputs import read_detections, read_groundtruth
from rfcn_tf.ops.boxes import yxyx_to_xywh

__all__ = ["COCO_STAT_NAMES", "build_coco_groundtruth", "build_coco_results", "evaluate_coco"]

# Order of COCOeval.stats for iouType="bbox" (cocoeval.py summarize()).
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def _xywh(boxes_yxyx: np.ndarray) -> np.ndarray:
    if boxes_yxyx.shape[0] == 0:
        return np.zeros((0, 4), np.float64)
    return np.asarray(yxyx_to_xywh(boxes_yxyx.astype(np.float64)), dtype=np.float64)


def _category_map(num_classes: int, category_ids: Sequence[int] | None) -> list[int]:
    if category_ids is None:
        return list(range(1, num_classes + 1))
    ids = [int(c) for c in category_ids]
    if len(ids) != num_classes:
        raise ValueError(
            f"category_ids has {len(ids)} entries but class_names has {num_classes}: "
            f"one COCO category id per class is needed"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"category_ids must be unique, got {ids}")
    return ids


def build_coco_groundtruth(
    groundtruths: Sequence[Mapping],
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> COCO:
    """An indexed in-memory pycocotools `COCO` holding the ground truth (xywh, 1-based ann ids).

    Args:
        groundtruths: per-image dicts (module docstring); image ids must be unique.
        class_names: C names; category `category_ids[i]` (or i + 1) is named `class_names[i]`.
        category_ids: optional C COCO category ids, class c -> `category_ids[c - 1]`.

    Returns:
        `COCO` with `dataset` = {"images", "annotations", "categories"} and its index built.
    """
    num_classes = len(class_names)
    cats = _category_map(num_classes, category_ids)
    images, annotations = [], []
    seen: set[int] = set()
    for gt in groundtruths:
        image_id, where, boxes, classes, difficult, is_crowd = read_groundtruth(
            gt, num_classes=num_classes, seen=seen, required_keys=("height", "width")
        )
        images.append({"id": image_id, "height": int(gt["height"]), "width": int(gt["width"])})
        n = boxes.shape[0]
        flags = difficult | is_crowd
        xywh = _xywh(boxes)
        if "area" in gt and np.asarray(gt["area"]).size:
            area = np.asarray(gt["area"], np.float64).reshape(-1)
            if area.shape[0] != n:
                raise ValueError(f"{where}['area'] has {area.shape[0]} entries but 'boxes' has {n}")
        else:
            area = xywh[:, 2] * xywh[:, 3]
        for i in range(n):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cats[int(classes[i]) - 1],
                    "bbox": [float(v) for v in xywh[i]],
                    "area": float(area[i]),
                    "iscrowd": int(flags[i]),
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": str(name)} for cid, name in zip(cats, class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def build_coco_results(
    detections: Sequence[Mapping],
    *,
    num_classes: int,
    category_ids: Sequence[int] | None = None,
    image_ids: set[int] | None = None,
) -> list[dict]:
    """Detections in COCO results format: `[{"image_id", "category_id", "bbox" xywh, "score"}]`.

    This is also what `detections.json` holds (the format the COCO server accepts).

    Args:
        detections: per-image dicts (module docstring).
        num_classes: C.
        category_ids: optional C COCO category ids.
        image_ids: when given, a detection on an image outside it raises ValueError.

    Returns:
        list of dicts with Python floats/ints (JSON-serializable), in input order.
    """
    cats = _category_map(num_classes, category_ids)
    results = []
    seen: set[int] = set()
    for det in detections:
        image_id, _, boxes, scores, classes = read_detections(
            det, num_classes=num_classes, seen=seen, image_ids=image_ids
        )
        m = boxes.shape[0]
        xywh = _xywh(boxes)
        for i in range(m):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cats[int(classes[i]) - 1],
                    "bbox": [float(v) for v in xywh[i]],
                    "score": float(scores[i]),
                }
            )
    return results


def _results_coco(coco_gt: COCO, results: list[dict]) -> COCO:
    """The detections as a `COCO` object, as `COCO.loadRes` builds it for bbox results (area =
    w * h, iscrowd 0, 1-based ids, the ground truth's images and categories), but also for an
    empty list, on which `loadRes` fails (it reads `anns[0]`)."""
    anns = []
    for i, r in enumerate(results):
        ann = dict(r)
        ann["area"] = r["bbox"][2] * r["bbox"][3]
        ann["id"] = i + 1
        ann["iscrowd"] = 0
        anns.append(ann)
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def _nan_if_negative(x: float) -> float:
    x = float(x)
    return math.nan if x < 0 else x


def evaluate_coco(
    groundtruths: Sequence[Mapping],
    detections: Sequence[Mapping],
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> dict:
    """COCO bbox metrics (pycocotools `COCOeval`, maxDets 1/10/100) of per-image detections.

    Args:
        groundtruths: one dict per evaluated image (module docstring); an image without objects
            has empty arrays. Only these images are evaluated.
        detections: per-image dicts (ids among the ground truth's; may be empty or omit images).
        class_names: C names; `class_names[0]` is class 1.
        category_ids: optional C COCO category ids (class c -> `category_ids[c - 1]`), e.g.
            `DatasetInfo.category_ids`; default 1..C.

    Returns:
        dict with the 12 `COCO_STAT_NAMES` ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
        "AR10", "AR100", "ARs", "ARm", "ARl") as floats in [0, 1] (NaN where pycocotools gives
        -1), "per_class_AP" and "per_class_AP50": {class name: float, NaN without ground truth},
        and "summary": pycocotools' printed summary table (str), captured instead of printed.
    """
    num_classes = len(class_names)
    if num_classes < 1:
        raise ValueError("class_names must name at least one class, got an empty list")
    coco_gt = build_coco_groundtruth(
        groundtruths, class_names=class_names, category_ids=category_ids
    )
    results = build_coco_results(
        detections,
        num_classes=num_classes,
        category_ids=category_ids,
        image_ids=set(coco_gt.getImgIds()),
    )
    coco_dt = _results_coco(coco_gt, results)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = {name: _nan_if_negative(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}

    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets];
    # area "all" is A = 0, maxDets 100 is M = -1, IoU 0.5 is T = 0 (params.iouThrs[0]).
    precision = evaluator.eval["precision"]
    cat_order = list(evaluator.params.catIds)
    per_ap, per_ap50 = {}, {}
    for cid, name in zip(_category_map(num_classes, category_ids), class_names):
        k = cat_order.index(cid)
        p = precision[:, :, k, 0, -1]
        per_ap[str(name)] = float(np.mean(p)) if (p > -1).all() else math.nan
        p50 = p[0]
        per_ap50[str(name)] = float(np.mean(p50)) if (p50 > -1).all() else math.nan
    out["per_class_AP"] = per_ap
    out["per_class_AP50"] = per_ap50
    out["summary"] = buffer.getvalue()
    return out
