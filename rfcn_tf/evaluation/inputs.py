"""Validation of the per-image ground-truth and detection dicts that every metric reads.

One place for the checks `voc_metrics.evaluate_voc` and `coco_metrics` (ground truth and results)
apply to their inputs, so that both metrics accept and reject exactly the same dicts with the
same messages (docs/INTERFACES.md, "Evaluation").

Shape shorthand:
    N  ground-truth boxes of one image       M  detections of one image
    C  classes (without background)

Inputs (boxes yxyx in ORIGINAL image pixels, continuous coordinates):
    ground truth: {"image_id": int, "boxes": [N, 4], "classes": [N] int 1..C,
                   optional "difficult": [N] bool, optional "is_crowd": [N] bool, ...}
    detections:   {"image_id": int, "boxes": [M, 4], "scores": [M], "classes": [M] int 1..C}

An empty array (any shape with size 0) stands for "no rows"; an absent or empty "difficult" or
"is_crowd" means all False.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
    "DetectionImage",
    "GroundTruthImage",
    "as_array",
    "check_classes",
    "read_detections",
    "read_groundtruth",
]


class GroundTruthImage(NamedTuple):
    """One validated ground-truth dict.

    Attributes:
        image_id: int. where: str naming it in error messages ("groundtruths[image_id=7]").
        boxes: float64 `[N, 4]` yxyx, original pixels. classes: int64 `[N]` in 1..C.
        difficult, is_crowd: bool `[N]`.
    """

    image_id: int
    where: str
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray
    is_crowd: np.ndarray


class DetectionImage(NamedTuple):
    """One validated detections dict.

    Attributes:
        image_id: int. where: str naming it in error messages ("detections[image_id=7]").
        boxes: float64 `[M, 4]` yxyx, original pixels. scores: float64 `[M]`.
        classes: int64 `[M]` in 1..C.
    """

    image_id: int
    where: str
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def as_array(d: Mapping, key: str, shape_tail: tuple, dtype, where: str) -> np.ndarray:
    """`d[key]` as a `[n, *shape_tail]` array of `dtype`; an empty value gives n = 0.

    Raises:
        ValueError: naming `where` and the key when it is missing or has another shape.
    """
    if key not in d:
        raise ValueError(f"{where} has no '{key}' (keys: {sorted(d)})")
    a = np.asarray(d[key])
    if a.size == 0:
        return np.zeros((0,) + shape_tail, dtype)
    a = a.astype(dtype)
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail:
        raise ValueError(
            f"{where}['{key}'] must be [n{''.join(f', {s}' for s in shape_tail)}], "
            f"got shape {a.shape}"
        )
    return a


def check_classes(classes: np.ndarray, num_classes: int, where: str) -> None:
    """Raises ValueError naming the first row of int `classes` `[n]` outside 1..num_classes."""
    bad = np.flatnonzero((classes < 1) | (classes > num_classes))
    if bad.size:
        raise ValueError(
            f"{where} has class id {classes[bad[0]]} at row {bad[0]}; ids must be 1..{num_classes} "
            f"(0 is background and never a ground-truth or detection class)"
        )


def _check_lengths(where: str, n: int, arrays: tuple[tuple[str, np.ndarray], ...]) -> None:
    for name, arr in arrays:
        if arr.shape[0] != n:
            raise ValueError(f"{where}['{name}'] has {arr.shape[0]} entries but 'boxes' has {n}")


def _flags(gt: Mapping, key: str, n: int) -> np.ndarray:
    """bool `[N]` from an optional key; absent or empty means all False."""
    if key in gt and np.asarray(gt[key]).size:
        return np.asarray(gt[key], bool).reshape(-1)
    return np.zeros(n, bool)


def read_groundtruth(
    gt: Mapping, *, num_classes: int, seen: set[int], required_keys: tuple[str, ...] = ()
) -> GroundTruthImage:
    """Validates one ground-truth dict and records its image id in `seen`.

    Checks, in order: the image id is not in `seen`; every key of `required_keys` is present;
    "boxes" is `[N, 4]` and "classes" `[N]`; "classes", "difficult" and "is_crowd" have N
    entries; every class id is in 1..num_classes.

    Args:
        gt: the per-image dict (module docstring).
        num_classes: C.
        seen: image ids already read; this one is added (a repeat raises).
        required_keys: further keys the caller needs (e.g. ("height", "width") for COCO).

    Returns:
        `GroundTruthImage` (float64 boxes, int64 classes, bool flags).

    Raises:
        ValueError: naming the image id, the key and the value.
    """
    image_id = int(gt["image_id"])
    where = f"groundtruths[image_id={image_id}]"
    if image_id in seen:
        raise ValueError(f"ground truth image_id {image_id} appears more than once")
    seen.add(image_id)
    for key in required_keys:
        if key not in gt:
            raise ValueError(f"{where} has no '{key}' (keys: {sorted(gt)})")
    boxes = as_array(gt, "boxes", (4,), np.float64, where)
    classes = as_array(gt, "classes", (), np.int64, where)
    n = boxes.shape[0]
    difficult = _flags(gt, "difficult", n)
    is_crowd = _flags(gt, "is_crowd", n)
    _check_lengths(
        where, n, (("classes", classes), ("difficult", difficult), ("is_crowd", is_crowd))
    )
    check_classes(classes, num_classes, where)
    return GroundTruthImage(image_id, where, boxes, classes, difficult, is_crowd)


def read_detections(
    det: Mapping, *, num_classes: int, seen: set[int], image_ids: Container[int] | None = None
) -> DetectionImage:
    """Validates one detections dict and records its image id in `seen`.

    Checks, in order: the image id is among `image_ids` (when given) and not in `seen`; "boxes"
    is `[M, 4]`, "scores" and "classes" `[M]`; every class id is in 1..num_classes.

    Args:
        det: the per-image dict (module docstring).
        num_classes: C.
        seen: image ids already read; this one is added (a repeat raises).
        image_ids: the ground truth's image ids; a detection on another image raises.

    Returns:
        `DetectionImage` (float64 boxes and scores, int64 classes).

    Raises:
        ValueError: naming the image id, the key and the value.
    """
    image_id = int(det["image_id"])
    where = f"detections[image_id={image_id}]"
    if image_ids is not None and image_id not in image_ids:
        raise ValueError(
            f"{where}: image id {image_id} has detections but no ground-truth entry; every "
            f"evaluated image needs one (with empty arrays when it has no objects)"
        )
    if image_id in seen:
        raise ValueError(f"detections image_id {image_id} appears more than once")
    seen.add(image_id)
    boxes = as_array(det, "boxes", (4,), np.float64, where)
    scores = as_array(det, "scores", (), np.float64, where)
    classes = as_array(det, "classes", (), np.int64, where)
    _check_lengths(where, boxes.shape[0], (("scores", scores), ("classes", classes)))
    check_classes(classes, num_classes, where)
    return DetectionImage(image_id, where, boxes, scores, classes)
