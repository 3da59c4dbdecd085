"""Tests for rfcn_tf.evaluation.inputs: the per-image dict checks shared by VOC and COCO metrics."""

import numpy as np
import pytest

from rfcn_tf.evaluation.coco_metrics import evaluate_coco
from rfcn_tf.evaluation.inputs import read_detections, read_groundtruth
from rfcn_tf.evaluation.voc_metrics import evaluate_voc

G1 = [10.0, 10.0, 30.0, 30.0]


def _gt(image_id, boxes, classes, **extra):
    return {
        "image_id": image_id,
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "classes": np.asarray(classes, np.int64),
        "height": 100,
        "width": 100,
        **extra,
    }


def _det(image_id, boxes, scores, classes):
    return {
        "image_id": image_id,
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "scores": np.asarray(scores, np.float64),
        "classes": np.asarray(classes, np.int64),
    }


def test_read_groundtruth_defaults_flags_and_records_the_id():
    seen = set()
    g = read_groundtruth(
        _gt(4, [G1, G1], [1, 2], difficult=[True, False], is_crowd=[]), num_classes=2, seen=seen
    )
    assert g.image_id == 4 and g.where == "groundtruths[image_id=4]" and seen == {4}
    assert g.boxes.dtype == np.float64 and g.boxes.shape == (2, 4)
    assert g.classes.dtype == np.int64
    np.testing.assert_array_equal(g.difficult, [True, False])
    np.testing.assert_array_equal(g.is_crowd, [False, False])  # empty means all False
    empty = read_groundtruth({"image_id": 5, "boxes": [], "classes": []}, num_classes=2, seen=seen)
    assert empty.boxes.shape == (0, 4) and empty.difficult.shape == (0,) and seen == {4, 5}


def test_read_detections_checks_membership_before_repeats():
    seen = {1}
    with pytest.raises(ValueError, match="image id 1 has detections but no ground-truth"):
        read_detections(_det(1, [G1], [0.5], [1]), num_classes=1, seen=seen, image_ids={2})
    with pytest.raises(ValueError, match="detections image_id 1 appears more than once"):
        read_detections(_det(1, [G1], [0.5], [1]), num_classes=1, seen=seen, image_ids=None)


@pytest.mark.parametrize(
    "gts, dets, match",
    [
        ([_gt(1, [G1], [1])], [_det(7, [G1], [0.9], [1])], "image id 7 has detections but no"),
        ([_gt(1, [G1], [1]), _gt(1, [G1], [1])], [], "image_id 1 appears more than once"),
        (
            [_gt(1, [G1], [1])],
            [_det(1, [G1], [0.9], [1]), _det(1, [G1], [0.9], [1])],
            "detections image_id 1 appears more than once",
        ),
        ([_gt(1, [G1], [0])], [], r"class id 0 at row 0; ids must be 1..2"),
        ([_gt(1, [G1], [1])], [_det(1, [G1], [0.9], [3])], r"class id 3 at row 0"),
        ([_gt(1, [G1], [1])], [_det(1, [G1], [0.9, 0.8], [1])], r"'scores'\] has 2 entries"),
        ([_gt(1, [G1], [1], difficult=[False, True])], [], r"'difficult'\] has 2 entries"),
        ([_gt(1, [G1], [1], is_crowd=[False, True])], [], r"'is_crowd'\] has 2 entries"),
        ([{"image_id": 1, "classes": [1], "height": 9, "width": 9}], [], r"has no 'boxes'"),
        (
            [{**_gt(1, [G1], [1]), "boxes": np.ones((1, 3))}],
            [],
            r"'boxes'\] must be \[n, 4\], got shape \(1, 3\)",
        ),
    ],
)
def test_voc_and_coco_reject_the_same_inputs_alike(gts, dets, match):
    with pytest.raises(ValueError, match=match):
        evaluate_voc(gts, dets, num_classes=2)
    with pytest.raises(ValueError, match=match):
        evaluate_coco(gts, dets, class_names=["a", "b"])
