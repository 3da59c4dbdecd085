"""Tests for rfcn_tf.evaluation.voc_metrics: hand-computed cases and a pycocotools cross-check."""

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rfcn_tf.evaluation.voc_metrics import box_iou_yxyx, evaluate_voc, voc_ap


def _gt(image_id, boxes, classes, difficult=None, h=100, w=100):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = boxes.shape[0]
    return {
        "image_id": image_id,
        "boxes": boxes,
        "classes": np.asarray(classes, np.int64),
        "difficult": np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool),
        "is_crowd": np.zeros(n, bool),
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


G1 = [10, 10, 30, 30]
G2 = [50, 50, 80, 90]


# ---------------------------------------------------------------- voc_ap


def test_voc_ap_hand_computed():
    # ranked TP, FP, TP with 2 positives: recall .5 .5 1, precision 1 .5 2/3
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    # all-point: envelope 1 on (0, .5], 2/3 on (.5, 1]
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    # 11-point: t = 0 .. .5 (6 thresholds) -> 1, t = .6 .. 1 (5) -> 2/3
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_voc_ap_empty_and_partial_recall():
    assert voc_ap([], [], use_07_metric=False) == 0.0
    assert voc_ap([], [], use_07_metric=True) == 0.0
    # recall stops at 0.3 exactly (3 of 10 found, all correct)
    rec = np.array([0.1, 0.2, 0.3])
    prec = np.ones(3)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.3, abs=1e-12)
    # thresholds 0, .1, .2, .3 are reached (i/10 == k/10 exactly) -> 4/11
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(4 / 11, abs=1e-12)


def test_voc_ap_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        voc_ap([0.1, 0.2], [1.0], use_07_metric=False)


def test_box_iou_continuous_no_plus_one():
    iou = box_iou_yxyx(
        np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 5], [5, 5, 15, 15], [20, 20, 30, 30]])
    )
    np.testing.assert_allclose(iou, [[0.5, 25 / 175, 0.0]], atol=1e-15)


# ---------------------------------------------------------------- evaluate_voc


@pytest.mark.parametrize("use_07", [False, True])
def test_duplicate_detection_is_false_positive(use_07):
    gts = [_gt(1, [G1, G2], [1, 1])]
    dets = [_det(1, [G1, [11, 10, 31, 30], G2], [0.9, 0.8, 0.7], [1, 1, 1])]
    out = evaluate_voc(gts, dets, num_classes=1, use_07_metric=use_07)
    np.testing.assert_allclose(out["recall"][1], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(out["precision"][1], [1.0, 0.5, 2 / 3])
    expected = (6 + 5 * 2 / 3) / 11 if use_07 else 0.5 + 0.5 * 2 / 3
    assert out["ap"][1] == pytest.approx(expected, abs=1e-12)
    assert out["mAP"] == pytest.approx(expected, abs=1e-12)
    assert out["num_groundtruths"][1] == 2 and out["num_detections"][1] == 3


def test_difficult_match_is_ignored_not_fp_and_not_counted():
    # G2 is difficult: the top detection hits it (ignored), then TP on G1, then an FP.
    gts = [_gt(1, [G1, G2], [1, 1], difficult=[False, True])]
    dets = [_det(1, [G2, G1, [0, 60, 5, 65]], [0.9, 0.8, 0.7], [1, 1, 1])]
    out = evaluate_voc(gts, dets, num_classes=1)
    assert out["num_groundtruths"][1] == 1
    np.testing.assert_allclose(out["recall"][1], [1.0, 1.0])
    np.testing.assert_allclose(out["precision"][1], [1.0, 0.5])
    assert out["ap"][1] == pytest.approx(1.0)
    # Without the difficult flag, the top detection is a TP and G2 counts as a positive.
    gts_plain = [_gt(1, [G1, G2], [1, 1])]
    out_plain = evaluate_voc(gts_plain, dets, num_classes=1)
    assert out_plain["num_groundtruths"][1] == 2
    np.testing.assert_allclose(out_plain["recall"][1], [0.5, 1.0, 1.0])
    dets_dup = [_det(1, [G2, G2, G1], [0.9, 0.85, 0.8], [1, 1, 1])]
    # two hits on the difficult box: both ignored (devkit: not a duplicate FP)
    out = evaluate_voc(gts, dets_dup, num_classes=1)
    np.testing.assert_allclose(out["precision"][1], [1.0])
    assert out["ap"][1] == pytest.approx(1.0)
    # the same two hits on a normal box: the second is a duplicate FP
    out = evaluate_voc(gts_plain, dets_dup, num_classes=1)
    np.testing.assert_allclose(out["precision"][1], [1.0, 0.5, 2 / 3])


def test_detection_takes_best_box_even_if_difficult():
    # Difficult box D overlaps the detection more than the normal box N does; devkit takes the
    # max-IoU box (D) and ignores the detection, so N stays unfound.
    n_box = [0, 0, 10, 10]
    d_box = [0, 2, 10, 12]
    det_box = [0, 1.5, 10, 11.5]  # IoU with D = 9.5/10.5, with N = 8.5/11.5
    gts = [_gt(1, [n_box, d_box], [1, 1], difficult=[False, True])]
    out = evaluate_voc(gts, [_det(1, [det_box], [0.9], [1])], num_classes=1)
    assert out["recall"][1].size == 0 and out["ap"][1] == 0.0


def test_iou_threshold_is_inclusive_and_below_is_fp():
    gts = [_gt(1, [[0, 0, 10, 10]], [1])]
    exact = evaluate_voc(gts, [_det(1, [[0, 0, 10, 5]], [0.5], [1])], num_classes=1)
    assert exact["ap"][1] == pytest.approx(1.0)  # IoU exactly 0.5 is a match
    below = evaluate_voc(gts, [_det(1, [[0, 0, 10, 4.99]], [0.5], [1])], num_classes=1)
    assert below["ap"][1] == 0.0
    strict = evaluate_voc(
        gts, [_det(1, [[0, 0, 10, 5]], [0.5], [1])], num_classes=1, iou_threshold=0.7
    )
    assert strict["ap"][1] == 0.0


def test_ranking_is_global_across_images():
    # image 1: low-score TP; image 2 (no objects): high-score FP -> ranked FP, TP
    gts = [_gt(1, [G1], [1]), _gt(2, [], [])]
    dets = [_det(1, [G1], [0.6], [1]), _det(2, [G1], [0.9], [1])]
    out = evaluate_voc(gts, dets, num_classes=1)
    np.testing.assert_allclose(out["precision"][1], [0.0, 0.5])
    assert out["ap"][1] == pytest.approx(0.5)


def test_wrong_class_is_fp_and_no_detection_class_is_zero():
    gts = [_gt(1, [G1, G2], [1, 2])]
    dets = [_det(1, [G1], [0.9], [2])]  # class 2 on the class-1 box
    out = evaluate_voc(gts, dets, num_classes=2, class_names=["a", "b"])
    assert out["ap"] == {"a": 0.0, "b": 0.0}
    assert out["mAP"] == 0.0
    assert out["num_detections"] == {"a": 0, "b": 1}


def test_no_detections_at_all():
    gts = [_gt(1, [G1], [1]), _gt(2, [G2], [1])]
    for use_07 in (False, True):
        out = evaluate_voc(gts, [], num_classes=1, use_07_metric=use_07)
        assert out["ap"][1] == 0.0 and out["mAP"] == 0.0


def test_class_without_ground_truth_is_nan_and_excluded_from_mean():
    gts = [_gt(1, [G1], [1])]
    dets = [_det(1, [G1, G2], [0.9, 0.8], [1, 3])]  # class 3 has only a (false) detection
    out = evaluate_voc(gts, dets, num_classes=3)
    assert out["ap"][1] == 1.0
    assert math.isnan(out["ap"][2]) and math.isnan(out["ap"][3])
    assert out["mAP"] == 1.0
    assert math.isnan(evaluate_voc([_gt(1, [], [])], [], num_classes=2)["mAP"])


def test_crowd_boxes_are_ignored_like_difficult():
    gt = _gt(1, [G1, G2], [1, 1])
    gt["is_crowd"] = np.array([False, True])
    out = evaluate_voc([gt], [_det(1, [G2, G1], [0.9, 0.8], [1, 1])], num_classes=1)
    assert out["num_groundtruths"][1] == 1
    np.testing.assert_allclose(out["precision"][1], [1.0])


@pytest.mark.parametrize(
    "gts, dets, match",
    [
        ([_gt(1, [G1], [1])], [_det(7, [G1], [0.9], [1])], "image id 7 has detections but no"),
        ([_gt(1, [G1], [1]), _gt(1, [G2], [1])], [], "image_id 1 appears more than once"),
        ([_gt(1, [G1], [0])], [], r"class id 0 at row 0; ids must be 1..2"),
        ([_gt(1, [G1], [1])], [_det(1, [G1], [0.9], [3])], r"class id 3 at row 0"),
        ([_gt(1, [G1], [1])], [_det(1, [G1], [0.9, 0.8], [1])], r"'scores'\] has 2 entries"),
        ([_gt(1, [G1], [1, 1])], [], r"'classes'\] has 2 entries"),
    ],
)
def test_bad_inputs_name_the_culprit(gts, dets, match):
    with pytest.raises(ValueError, match=match):
        evaluate_voc(gts, dets, num_classes=2)


# ---------------------------------------------------------------- pycocotools cross-check


def _coco_101_point(rec, prec):
    """COCO's 101-point interpolated AP of one ranked list (cocoeval.py accumulate rules)."""
    if rec.size == 0:
        return 0.0
    env = np.maximum.accumulate(prec[::-1])[::-1]
    thresholds = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(rec, thresholds, side="left")
    q = np.where(idx < rec.size, env[np.minimum(idx, rec.size - 1)], 0.0)
    return float(q.mean())


def _random_case(seed, num_images=12, num_classes=3):
    """Objects on a 4x4 grid of 50-px cells so that no detection touches two boxes: the VOC and
    COCO matching rules then pick the same pairs, and only the AP interpolation differs."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image_id in range(1, num_images + 1):
        cells = rng.permutation(16)
        n_obj = rng.integers(0, 5)
        gboxes, gclasses, dboxes, dscores, dclasses = [], [], [], [], []
        for k in range(n_obj):
            cy, cx = divmod(cells[k], 4)
            y1, x1 = cy * 50 + rng.uniform(2, 10), cx * 50 + rng.uniform(2, 10)
            box = [y1, x1, y1 + rng.uniform(20, 35), x1 + rng.uniform(20, 35)]
            cls = int(rng.integers(1, num_classes + 1))
            gboxes.append(box)
            gclasses.append(cls)
            for _ in range(rng.integers(0, 3)):  # 0..2 jittered detections (TPs/duplicates/FPs)
                j = rng.uniform(-4, 4, size=4)
                dboxes.append(np.array(box) + j)  # stays > 2 px away from other cells' boxes
                dscores.append(rng.uniform())
                dclasses.append(
                    cls if rng.uniform() < 0.8 else int(rng.integers(1, num_classes + 1))
                )
        for k in range(n_obj, n_obj + rng.integers(0, 3)):  # background false positives
            cy, cx = divmod(cells[k], 4)
            y1, x1 = cy * 50 + 5, cx * 50 + 5
            dboxes.append([y1, x1, y1 + 30, x1 + 30])
            dscores.append(rng.uniform())
            dclasses.append(int(rng.integers(1, num_classes + 1)))
        gts.append(_gt(image_id, np.array(gboxes).reshape(-1, 4), gclasses, h=200, w=200))
        dets.append(_det(image_id, np.array(dboxes).reshape(-1, 4), dscores, dclasses))
    return gts, dets


def _pycocotools_ap50_per_class(gts, dets, num_classes):
    images = [{"id": g["image_id"], "height": g["height"], "width": g["width"]} for g in gts]
    anns, results = [], []
    for g in gts:
        for b, c in zip(g["boxes"], g["classes"]):
            h, w = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": g["image_id"],
                    "category_id": int(c),
                    "bbox": [b[1], b[0], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    for d in dets:
        for b, s, c in zip(d["boxes"], d["scores"], d["classes"]):
            results.append(
                {
                    "image_id": d["image_id"],
                    "category_id": int(c),
                    "score": float(s),
                    "bbox": [b[1], b[0], b[3] - b[1], b[2] - b[0]],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c} for c in range(1, num_classes + 1)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    # precision: [T, R, K, A, M]; IoU 0.5 is T=0, area "all" A=0, maxDets 100 is M=2
    p = ev.eval["precision"][0, :, :, 0, 2]
    return [float(p[:, k].mean()) if (p[:, k] > -1).all() else math.nan for k in range(num_classes)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools_ap50_when_interpolations_agree(seed):
    gts, dets = _random_case(seed)
    ours = evaluate_voc(gts, dets, num_classes=3)
    coco = _pycocotools_ap50_per_class(gts, dets, 3)
    for c in (1, 2, 3):
        if math.isnan(coco[c - 1]):
            assert math.isnan(ours["ap"][c])
            continue
        # Same matches -> same PR curve -> COCO's 101-point AP recomputed from our curve equals
        # pycocotools' exactly; our all-point AP differs from it by less than one recall step.
        assert _coco_101_point(ours["recall"][c], ours["precision"][c]) == pytest.approx(
            coco[c - 1], abs=1e-12
        )
        assert abs(ours["ap"][c] - coco[c - 1]) < 0.02


def test_perfect_detections_match_pycocotools_exactly():
    gts, _ = _random_case(5)
    dets = [
        _det(g["image_id"], g["boxes"], np.linspace(0.9, 0.5, len(g["classes"])), g["classes"])
        for g in gts
    ]
    ours = evaluate_voc(gts, dets, num_classes=3)
    coco = _pycocotools_ap50_per_class(gts, dets, 3)
    for c in (1, 2, 3):
        assert ours["ap"][c] == 1.0 and coco[c - 1] == pytest.approx(1.0)
