"""PASCAL VOC detection metrics (average precision per class and its mean), in NumPy.

Our own implementation of the rules of the VOC development kit's `VOCevaldet.m` (Everingham et al.,
"The PASCAL Visual Object Classes Challenge", IJCV 2010, sec. 4.2), used for R-FCN's VOC results
(R-FCN sec. 4.1 reports mAP at IoU 0.5 on VOC 2007 test with the 11-point metric of VOC07).

Shape shorthand:
    N  ground-truth boxes of one image         M  detections of one image
    D  detections of one class over all images (the ranked list)

Inputs are the per-image dicts of docs/INTERFACES.md ("Evaluation"), boxes in ORIGINAL image
pixels, yxyx:
    ground truth: {"image_id": int, "boxes": [N, 4], "classes": [N] int 1..C,
                   "difficult": [N] bool, "is_crowd": [N] bool, "height": int, "width": int}
    detections:   {"image_id": int, "boxes": [M, 4], "scores": [M], "classes": [M] int 1..C}

Rules (devkit, with our choices where it is silent or where we depart, marked "choice"):
    - Per class, all detections of all images are ranked by descending score. Ties keep input
      order (detections list order, then row order within an image): a stable sort, as MATLAB's
      `sort` is.
    - Each detection is compared with every ground-truth box of its class in its image (difficult
      ones included) and takes the one of largest IoU. If that IoU >= `iou_threshold` (devkit:
      `ovmax >= minoverlap`): a difficult box makes the detection IGNORED (neither TP nor FP); an
      unmatched non-difficult box makes it a TP and marks the box matched; an already matched box
      makes it a FP (duplicate detection). Below the threshold, or with no box of the class in
      the image: FP.
    - Choice: crowd boxes (`is_crowd`, COCO only; VOC has none) are treated exactly like
      difficult ones (they can absorb detections but never count as positives).
    - Choice: IoU on continuous coordinates, area = (y2 - y1) * (x2 - x1) with no "+1" (the
      devkit adds 1 pixel to widths and heights because it uses inclusive integer pixel indices;
      our boxes are continuous, as COCO's and TF's are). Results differ slightly from the
      devkit's on small boxes.
    - recall = cumTP / npos with npos the number of non-difficult (and non-crowd) boxes of the
      class; precision = cumTP / (cumTP + cumFP).
    - AP: `use_07_metric=True` is VOC2007's 11-point interpolated AP (mean over t in {0, 0.1, ...,
      1} of the max precision at recall >= t, 0 if none; thresholds are exactly i/10);
      `use_07_metric=False` is VOC2010+'s area under the precision envelope (all points).
    - Choice: a class with no non-difficult ground truth in the whole set has AP = NaN and is
      EXCLUDED from the mean (the devkit divides by npos = 0 and gives NaN or garbage; COCO's
      evaluation likewise excludes such classes with -1). A class with ground truth but no
      detection has AP = 0 and is included. If no class has ground truth, mAP is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rfcn_tf.evaluation.inputs import read_detections, read_groundtruth

__all__ = ["box_iou_yxyx", "evaluate_voc", "voc_ap"]


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """Average precision from a ranked list's recall and precision (VOC devkit definitions).

    Args:
        recall: float `[D]`, non-decreasing cumulative recall after each ranked detection.
        precision: float `[D]`, precision after each ranked detection. D may be 0 (AP = 0).
        use_07_metric: True for VOC2007's 11-point interpolated AP: mean over t = 0, 0.1, ..., 1
            of max(precision[recall >= t]) (0 when no recall reaches t); False for VOC2010+'s
            all-point AP: the area under the precision envelope p_interp(r) = max_{r' >= r} p(r').

    Returns:
        AP in [0, 1] (Python float).
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(
            f"recall and precision must have the same length, got {recall.shape} and "
            f"{precision.shape}"
        )
    if use_07_metric:
        total = 0.0
        for i in range(11):
            t = i / 10.0
            reached = precision[recall >= t]
            total += reached.max() if reached.size else 0.0
        return float(total / 11.0)  # sum first: 11 ones give exactly 1
    # Sentinels: recall 0 -> 1, precision 0 at both ends (devkit VOCap.m).
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    # Precision envelope: running max from the right.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def box_iou_yxyx(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of yxyx boxes on continuous coordinates (no +1), float64.

    Args:
        boxes1: `[N, 4]` yxyx (any consistent unit). boxes2: `[M, 4]` yxyx.

    Returns:
        float64 `[N, M]`; 0 where the union is empty (two degenerate boxes).
    """
    b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = np.clip(b1[:, 2] - b1[:, 0], 0, None) * np.clip(b1[:, 3] - b1[:, 1], 0, None)
    area2 = np.clip(b2[:, 2] - b2[:, 0], 0, None) * np.clip(b2[:, 3] - b2[:, 1], 0, None)
    ih = np.clip(
        np.minimum(b1[:, None, 2], b2[None, :, 2]) - np.maximum(b1[:, None, 0], b2[None, :, 0]),
        0,
        None,
    )
    iw = np.clip(
        np.minimum(b1[:, None, 3], b2[None, :, 3]) - np.maximum(b1[:, None, 1], b2[None, :, 1]),
        0,
        None,
    )
    inter = ih * iw
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _match_image(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy devkit matching of one image and one class; detections already ranked.

    Returns:
        `(tp, fp)` float64 `[M]` each, 0/1 flags; a row with both 0 is ignored (matched a
        difficult or crowd box).
    """
    m = det_boxes.shape[0]
    tp = np.zeros(m, np.float64)
    fp = np.zeros(m, np.float64)
    if gt_boxes.shape[0] == 0:
        fp[:] = 1.0
        return tp, fp
    iou = box_iou_yxyx(det_boxes, gt_boxes)
    best = np.argmax(iou, axis=1)  # first maximal box on ties (MATLAB max's convention)
    best_iou = iou[np.arange(m), best]
    matched = np.zeros(gt_boxes.shape[0], bool)
    for i in range(m):
        if best_iou[i] >= iou_threshold:
            j = best[i]
            if gt_ignore[j]:
                continue
            if not matched[j]:
                tp[i] = 1.0
                matched[j] = True
            else:
                fp[i] = 1.0
        else:
            fp[i] = 1.0
    return tp, fp


def evaluate_voc(
    groundtruths: Sequence[Mapping],
    detections: Sequence[Mapping],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict:
    """VOC average precision per class and its mean (rules in the module docstring).

    Args:
        groundtruths: one dict per evaluated image (docs/INTERFACES.md), boxes yxyx in original
            pixels; an image without objects has empty arrays. `difficult` and `is_crowd` may be
            absent (all False). Image ids must be unique.
        detections: per-image dicts (same ids; images without detections may be absent), boxes
            yxyx in original pixels, `scores` [M] float, `classes` [M] int 1..C.
        num_classes: C (classes without background).
        iou_threshold: minimum IoU for a match (VOC: 0.5), compared with >=.
        use_07_metric: VOC2007 11-point AP (True) or VOC2010+ all-point AP (False).
        class_names: optional C names (`class_names[0]` is class 1) used as keys of the per-class
            dicts; default: the class ids 1..C (ints).

    Returns:
        dict with
            "ap": {class: float} AP per class in 1..C order, NaN for a class without ground truth;
            "mAP": float, mean of the non-NaN APs (NaN if none);
            "num_groundtruths": {class: int} non-difficult, non-crowd boxes;
            "num_detections": {class: int};
            "precision", "recall": {class: float64 [D]} the ranked list's curves (for PR plots);
            "iou_threshold": float; "use_07_metric": bool.

    Raises:
        ValueError: naming the image id / key / value for a detection on an image absent from
            `groundtruths`, duplicate ground-truth image ids, class ids outside 1..C, or arrays of
            mismatched lengths.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but num_classes is {num_classes}"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    keys = list(class_names) if class_names is not None else list(range(1, num_classes + 1))

    # ground truth by image id: per class (boxes, ignore flags)
    gt_by_image: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    npos = np.zeros(num_classes + 1, np.int64)
    seen_gt_images: set[int] = set()
    for gt in groundtruths:
        g = read_groundtruth(gt, num_classes=num_classes, seen=seen_gt_images)
        ignore = g.difficult | g.is_crowd
        np.add.at(npos, g.classes[~ignore], 1)
        gt_by_image[g.image_id] = (g.boxes, g.classes, ignore)

    # detections: per class, per image ranked match -> (scores, tp, fp) with global order index
    per_class: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = [
        [] for _ in range(num_classes + 1)
    ]
    order_base = 0
    seen_det_images: set[int] = set()
    for det in detections:
        image_id, where, boxes, scores, classes = read_detections(
            det, num_classes=num_classes, seen=seen_det_images, image_ids=gt_by_image
        )
        m = boxes.shape[0]
        if not np.all(np.isfinite(scores)):
            raise ValueError(
                f"{where}['scores'] has non-finite values: {scores[~np.isfinite(scores)]}"
            )
        gt_boxes, gt_classes, gt_ignore = gt_by_image[image_id]
        input_order = order_base + np.arange(m)
        order_base += m
        for c in np.unique(classes):
            sel = np.flatnonzero(classes == c)
            # rank within the image (stable: ties keep row order), consistent with global ranking
            sel = sel[np.argsort(-scores[sel], kind="stable")]
            gsel = gt_classes == c
            tp, fp = _match_image(boxes[sel], gt_boxes[gsel], gt_ignore[gsel], iou_threshold)
            per_class[c].append((scores[sel], input_order[sel], tp, fp))

    ap: dict = {}
    precision: dict = {}
    recall: dict = {}
    num_dets: dict = {}
    num_gts: dict = {}
    for c in range(1, num_classes + 1):
        key = keys[c - 1]
        if per_class[c]:
            scores = np.concatenate([p[0] for p in per_class[c]])
            order_idx = np.concatenate([p[1] for p in per_class[c]])
            tp = np.concatenate([p[2] for p in per_class[c]])
            fp = np.concatenate([p[3] for p in per_class[c]])
            # global rank: descending score, ties by input order (lexsort: last key is primary)
            rank = np.lexsort((order_idx, -scores))
            tp, fp = tp[rank], fp[rank]
            kept = (tp + fp) > 0  # drop detections ignored on difficult/crowd boxes
            tp, fp = tp[kept], fp[kept]
        else:
            tp = fp = np.zeros(0, np.float64)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        num_dets[key] = int(sum(p[0].shape[0] for p in per_class[c]))
        num_gts[key] = int(npos[c])
        if npos[c] == 0:
            ap[key] = math.nan
            rec = np.full(ctp.shape, math.nan)
        else:
            rec = ctp / float(npos[c])
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).tiny)
        if npos[c] > 0:
            ap[key] = voc_ap(rec, prec, use_07_metric=use_07_metric)
        precision[key] = prec
        recall[key] = rec
    valid = [v for v in ap.values() if not math.isnan(v)]
    return {
        "ap": ap,
        "mAP": float(np.mean(valid)) if valid else math.nan,
        "num_groundtruths": num_gts,
        "num_detections": num_dets,
        "precision": precision,
        "recall": recall,
        "iou_threshold": float(iou_threshold),
        "use_07_metric": bool(use_07_metric),
    }
