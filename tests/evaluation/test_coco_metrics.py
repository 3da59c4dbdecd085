"""Tests for rfcn_tf.evaluation.coco_metrics: the in-memory pycocotools adapter."""

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rfcn_tf.evaluation.coco_metrics import COCO_STAT_NAMES, build_coco_results, evaluate_coco

NAMES = ["cat", "dog", "bird"]


def _gt(image_id, boxes, classes, difficult=None, crowd=None, h=200, w=300):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = boxes.shape[0]
    return {
        "image_id": image_id,
        "boxes": boxes,
        "classes": np.asarray(classes, np.int64),
        "difficult": np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool),
        "is_crowd": np.zeros(n, bool) if crowd is None else np.asarray(crowd, bool),
        "height": h,
        "width": w,
    }


def _det(image_id, boxes, scores, classes):
    return {
        "image_id": image_id,
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "scores": np.asarray(scores, np.float64),
        "classes": np.asarray(classes, np.int64),
    }


def _random_case(seed, num_images=8):
    """Overlapping objects and noisy detections of every size bucket (no structure imposed)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image_id in range(10, 10 + num_images):
        n = int(rng.integers(0, 6))
        yx = rng.uniform(0, 150, size=(n, 2))
        hw = rng.choice([8.0, 40.0, 120.0], size=(n, 1)) * rng.uniform(0.7, 1.3, size=(n, 2))
        boxes = np.concatenate([yx, yx + hw], axis=1)
        classes = rng.integers(1, 4, size=n)
        gts.append(_gt(image_id, boxes, classes, crowd=rng.uniform(size=n) < 0.1))
        m = int(rng.integers(0, 8))
        src = rng.integers(0, max(n, 1), size=m)
        dboxes = (boxes[src] if n else np.tile([[10.0, 10, 50, 50]], (m, 1))) + rng.normal(
            0, 4, size=(m, 4)
        )
        dclasses = np.where(
            rng.uniform(size=m) < 0.8, classes[src] if n else 1, rng.integers(1, 4, size=m)
        )
        dets.append(_det(image_id, dboxes, rng.uniform(size=m), dclasses))
    return gts, dets


def _reference_stats(gts, dets):
    """pycocotools run the documented way (xywh written here, loadRes on a list)."""
    images = [{"id": g["image_id"], "height": g["height"], "width": g["width"]} for g in gts]
    anns = []
    for g in gts:
        for b, c, cr in zip(g["boxes"], g["classes"], g["is_crowd"]):
            w, h = b[3] - b[1], b[2] - b[0]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": g["image_id"],
                    "category_id": int(c),
                    "bbox": [b[1], b[0], w, h],
                    "area": w * h,
                    "iscrowd": int(cr),
                }
            )
    res = [
        {
            "image_id": d["image_id"],
            "category_id": int(c),
            "score": float(s),
            "bbox": [b[1], b[0], b[3] - b[1], b[2] - b[0]],
        }
        for d in dets
        for b, s, c in zip(d["boxes"], d["scores"], d["classes"])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": i} for i in (1, 2, 3)],
        }
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pycocotools_run_directly(seed, capsys):
    gts, dets = _random_case(seed)
    out = evaluate_coco(gts, dets, class_names=NAMES)
    ref = _reference_stats(gts, dets)
    for name, value in zip(COCO_STAT_NAMES, ref.stats):
        assert out[name] == pytest.approx(value, abs=1e-12) or (
            value == -1 and math.isnan(out[name])
        )
    for k, name in enumerate(NAMES):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert out["per_class_AP"][name] == pytest.approx(p.mean(), abs=1e-12)
        assert out["per_class_AP50"][name] == pytest.approx(p[0].mean(), abs=1e-12)
    assert 0.0 < out["AP"] < 1.0  # a non-trivial case
    assert "Average Precision" in out["summary"]
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured


def test_hand_computed_half_recall():
    # two objects, one found exactly: recall 0.5 at precision 1 -> 51 of 101 recall points
    gts = [_gt(1, [[10, 10, 60, 60], [100, 100, 150, 190]], [1, 1])]
    out = evaluate_coco(gts, [_det(1, [[10, 10, 60, 60]], [0.9], [1])], class_names=["a"])
    assert out["AP50"] == pytest.approx(51 / 101, abs=1e-12)
    assert out["AP"] == pytest.approx(51 / 101, abs=1e-12)  # exact box: every IoU threshold
    assert out["AR100"] == pytest.approx(0.5, abs=1e-12)
    assert out["per_class_AP"] == {"a": pytest.approx(51 / 101, abs=1e-12)}


def test_perfect_and_zero_detections():
    gts, _ = _random_case(3)
    perfect = [
        _det(
            g["image_id"],
            g["boxes"][~g["is_crowd"]],
            np.full((~g["is_crowd"]).sum(), 0.9),
            g["classes"][~g["is_crowd"]],
        )
        for g in gts
    ]
    out = evaluate_coco(gts, perfect, class_names=NAMES)
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert out[name] == pytest.approx(1.0)
    out = evaluate_coco(gts, [], class_names=NAMES)
    for name in ("AP", "AP50", "AR1", "AR100"):
        assert out[name] == 0.0
    assert all(v == 0.0 for v in out["per_class_AP"].values())


def test_class_without_ground_truth_is_nan():
    gts = [_gt(1, [[10, 10, 60, 60]], [1])]
    out = evaluate_coco(
        gts, [_det(1, [[10, 10, 60, 60], [0, 0, 5, 5]], [0.9, 0.8], [1, 2])], class_names=["a", "b"]
    )
    assert out["per_class_AP"]["a"] == pytest.approx(1.0)
    assert math.isnan(out["per_class_AP"]["b"]) and math.isnan(out["per_class_AP50"]["b"])
    assert out["AP"] == pytest.approx(1.0)  # the mean skips the class without ground truth
    empty = evaluate_coco([_gt(1, [], [])], [], class_names=["a"])
    assert math.isnan(empty["AP"])


def test_difficult_box_is_ignored():
    gts = [_gt(1, [[10, 10, 60, 60], [100, 100, 150, 190]], [1, 1], difficult=[False, True])]
    dets = [_det(1, [[100, 100, 150, 190], [10, 10, 60, 60]], [0.95, 0.9], [1, 1])]
    assert evaluate_coco(gts, dets, class_names=["a"])["AP"] == pytest.approx(1.0)
    only_first = [_det(1, [[10, 10, 60, 60]], [0.9], [1])]
    assert evaluate_coco(gts, only_first, class_names=["a"])["AP"] == pytest.approx(1.0)
    gts[0]["difficult"][:] = False
    # not difficult any more: missing it halves the recall
    assert evaluate_coco(gts, only_first, class_names=["a"])["AP"] == pytest.approx(51 / 101)


def test_category_ids_map_classes():
    gts, dets = _random_case(1)
    a = evaluate_coco(gts, dets, class_names=NAMES)
    b = evaluate_coco(gts, dets, class_names=NAMES, category_ids=[17, 3, 90])
    for name in COCO_STAT_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-12) or math.isnan(a[name])
    assert a["per_class_AP"] == pytest.approx(b["per_class_AP"], nan_ok=True)
    res = build_coco_results(dets[:2], num_classes=3, category_ids=[17, 3, 90])
    assert {r["category_id"] for r in res} <= {17, 3, 90}
    with pytest.raises(ValueError, match="category_ids has 2 entries but class_names has 3"):
        evaluate_coco(gts, dets, class_names=NAMES, category_ids=[1, 2])


def test_results_are_xywh():
    res = build_coco_results([_det(4, [[10, 20, 50, 80]], [0.5], [2])], num_classes=2)
    assert res == [
        {"image_id": 4, "category_id": 2, "bbox": [20.0, 10.0, 60.0, 40.0], "score": 0.5}
    ]


def test_unknown_image_id_raises():
    with pytest.raises(ValueError, match="image id 5 has detections but no ground-truth entry"):
        evaluate_coco([_gt(1, [], [])], [_det(5, [[0, 0, 1, 1]], [0.5], [1])], class_names=["a"])
