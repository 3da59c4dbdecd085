"""Tests for rfcn_tf.evaluation.evaluator: frame conversion, accumulation, reports on disk."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from rfcn_tf.evaluation.coco_metrics import evaluate_coco
from rfcn_tf.evaluation.evaluator import (
    collect_detections,
    compute_metrics,
    evaluate_detector,
    format_summary,
    to_original_pixels,
)
from rfcn_tf.evaluation.voc_metrics import evaluate_voc

NAMES = ["circle", "square", "triangle"]
G = 4  # padded ground truth per image


def _batch(ids, orig_shapes, image_shapes, boxes_resized, classes, difficult=None):
    """Batched features (docs/INTERFACES.md) as NumPy: boxes in resized pixels, padded to G."""
    b = len(ids)
    hp = max(s[0] for s in image_shapes)
    wp = max(s[1] for s in image_shapes)
    gt_boxes = -np.ones((b, G, 4), np.float32)
    gt_classes = -np.ones((b, G), np.int32)
    gt_mask = np.zeros((b, G), bool)
    gt_difficult = np.zeros((b, G), bool)
    for i in range(b):
        n = len(classes[i])
        gt_boxes[i, :n] = boxes_resized[i]
        gt_classes[i, :n] = classes[i]
        gt_mask[i, :n] = True
        if difficult is not None:
            gt_difficult[i, :n] = difficult[i]
    return {
        "images": np.zeros((b, hp, wp, 3), np.uint8),
        "image_shapes": np.asarray(image_shapes, np.int32),
        "original_shapes": np.asarray(orig_shapes, np.int32),
        "image_ids": np.asarray(ids, np.int64),
        "gt_boxes": gt_boxes,
        "gt_classes": gt_classes,
        "gt_mask": gt_mask,
        "gt_difficult": gt_difficult,
        "gt_is_crowd": np.zeros((b, G), bool),
    }


def _dataset():
    # image 1: original 300x450 -> resized 200x300 (scale 1.5); image 2: 100x100 -> 200x200
    # (scale 0.5); image 3: no objects; image -1 is batch padding.
    b1 = _batch(
        [1, 2],
        [(300, 450), (100, 100)],
        [(200, 300), (200, 200)],
        [
            np.array([[20, 30, 80, 120], [100, 150, 180, 290]], np.float32),
            np.array([[10, 10, 190, 100]], np.float32),
        ],
        [[1, 2], [3]],
        difficult=[[False, True], [False]],
    )
    b2 = _batch(
        [3, -1],
        [(200, 200), (1, 1)],
        [(200, 200), (1, 1)],
        [np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)],
        [[], []],
    )
    return [b1, b2]


class Oracle:
    """detect_fn that echoes the batch's ground truth; the dataset is walked alongside."""

    def __init__(self, dataset, fp=True, m=6):
        self.batches = iter(dataset)
        self.fp = fp
        self.m = m
        self.calls = 0

    def __call__(self, images, image_shapes):
        batch = next(self.batches)
        np.testing.assert_array_equal(image_shapes, batch["image_shapes"])
        self.calls += 1
        bsz = images.shape[0]
        boxes = np.zeros((bsz, self.m, 4), np.float32)
        scores = np.zeros((bsz, self.m), np.float32)
        classes = np.zeros((bsz, self.m), np.int32)
        num = np.zeros((bsz,), np.int32)
        for b in range(bsz):
            mask = batch["gt_mask"][b]
            n = int(mask.sum())
            boxes[b, :n] = batch["gt_boxes"][b][mask]
            scores[b, :n] = 0.9
            classes[b, :n] = batch["gt_classes"][b][mask]
            if self.fp:  # a false positive with a low score in the corner
                boxes[b, n] = [0, 0, 8, 8]
                scores[b, n] = 0.2
                classes[b, n] = 1
                n += 1
            num[b] = n
            boxes[b, n:] = 777  # padding garbage past num_detections must be ignored
        return {
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": num,
        }


def test_to_original_pixels_hand_values():
    out = to_original_pixels(
        np.array([[20, 30, 80, 120], [-5, 0, 250, 400]]), (200, 300), (300, 450)
    )
    np.testing.assert_allclose(out, [[30, 45, 120, 180], [0, 0, 300, 450]])
    with pytest.raises(ValueError, match=r"image_shape must be positive"):
        to_original_pixels(np.zeros((1, 4)), (0, 5), (1, 1))


def test_collect_converts_frames_and_skips_padding():
    data = _dataset()
    gts, dets, timing = collect_detections(Oracle(data), data, progress=False)
    assert [g["image_id"] for g in gts] == [1, 2, 3] == [d["image_id"] for d in dets]
    np.testing.assert_allclose(
        gts[0]["boxes"], [[30, 45, 120, 180], [150, 225, 270, 435]], rtol=1e-6
    )
    np.testing.assert_array_equal(gts[0]["difficult"], [False, True])
    np.testing.assert_allclose(gts[1]["boxes"], [[5, 5, 95, 50]], rtol=1e-6)
    assert (gts[0]["height"], gts[0]["width"]) == (300, 450)
    assert gts[2]["boxes"].shape == (0, 4)
    # detections: gt boxes + the FP, scaled by the same factors; padding rows dropped
    np.testing.assert_allclose(
        dets[0]["boxes"], [[30, 45, 120, 180], [150, 225, 270, 435], [0, 0, 12, 12]], rtol=1e-6
    )
    np.testing.assert_allclose(dets[1]["boxes"], [[5, 5, 95, 50], [0, 0, 4, 4]], rtol=1e-6)
    np.testing.assert_array_equal(dets[0]["classes"], [1, 2, 1])
    assert timing["num_images"] == 3 and timing["detect_seconds"] > 0


def test_collect_max_images_and_score_threshold():
    data = _dataset()
    oracle = Oracle(data)
    gts, dets, _ = collect_detections(
        oracle, data, max_images=1, score_threshold=0.5, progress=False
    )
    assert len(gts) == len(dets) == 1 and oracle.calls == 1
    np.testing.assert_allclose(dets[0]["scores"], [0.9, 0.9])  # the 0.2 FP is gone
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        collect_detections(oracle, data, max_images=0)


def test_metrics_of_oracle_equal_direct_metric_calls():
    data = _dataset()
    gts, dets, _ = collect_detections(Oracle(data), data, progress=False)
    metrics, curves = compute_metrics(gts, dets, class_names=NAMES)
    coco = evaluate_coco(gts, dets, class_names=NAMES)
    voc07 = evaluate_voc(gts, dets, num_classes=3, use_07_metric=True, class_names=NAMES)
    for key in ("AP", "AP50", "AR100"):
        assert metrics["coco"][key] == coco[key]
    assert metrics["voc07"]["mAP"] == voc07["mAP"]
    # circle: 1 TP (0.9) then FPs (0.2) -> AP 1; square's only box is difficult -> no GT
    assert metrics["per_class"]["circle"]["AP_voc2010"] == 1.0
    assert math.isnan(metrics["per_class"]["square"]["AP_voc2010"])
    assert metrics["per_class"]["triangle"]["AP_voc07"] == 1.0
    assert metrics["num_images"] == 3 and metrics["num_detections"] == 6
    assert set(curves) == set(NAMES)


def test_evaluate_detector_writes_reports(tmp_path):
    data = _dataset()
    out = str(tmp_path / "eval")
    metrics = evaluate_detector(
        Oracle(data),
        data,
        class_names=NAMES,
        out_dir=out,
        progress=False,
        category_ids=[11, 12, 13],
        info={"checkpoint": "ckpt-7"},
    )
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)  # strict JSON: NaN became null
    assert saved["coco"]["AP"] == pytest.approx(metrics["coco"]["AP"])
    assert saved["per_class"]["square"]["AP_voc2010"] is None
    assert saved["info"] == {"checkpoint": "ckpt-7"}
    with open(os.path.join(out, "detections.json")) as f:
        results = json.load(f)
    assert len(results) == 6
    first = results[0]
    assert first["image_id"] == 1 and first["category_id"] == 11
    np.testing.assert_allclose(first["bbox"], [45, 30, 135, 90], rtol=1e-6)  # xywh original px
    md = open(os.path.join(out, "metrics.md")).read()
    assert "| circle |" in md and "| triangle |" in md and "mAP VOC07" in md
    pngs = sorted(os.listdir(os.path.join(out, "pr_curves")))
    assert pngs == ["01_circle.png", "02_square.png", "03_triangle.png"]
    for name in pngs:
        with Image.open(os.path.join(out, "pr_curves", name)) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    line = format_summary(metrics)
    assert line.startswith("3 images, 6 detections: AP ") and "mAP VOC07 1.000" in line


def test_errors_are_named():
    data = _dataset()
    with pytest.raises(ValueError, match="no images"):
        evaluate_detector(Oracle(data), [], class_names=NAMES, progress=False)
    bad = [{k: v for k, v in data[0].items() if k != "original_shapes"}]
    with pytest.raises(ValueError, match=r"lacks \['original_shapes'\]"):
        collect_detections(Oracle(data), bad, progress=False)
    with pytest.raises(ValueError, match=r"detect_fn output lacks \['num_detections'\]"):
        collect_detections(
            lambda i, s: {"detection_boxes": 0, "detection_scores": 0, "detection_classes": 0},
            data,
            progress=False,
        )


def test_tf_dataset_and_tf_function_detect():
    import tensorflow as tf

    data = _dataset()
    ds = tf.data.Dataset.from_generator(
        lambda: iter(data),
        output_signature={
            k: tf.TensorSpec((None,) * v.ndim, tf.as_dtype(v.dtype)) for k, v in data[0].items()
        },
    )

    @tf.function
    def detect(images, image_shapes):
        b = tf.shape(images)[0]
        hw = tf.cast(image_shapes, tf.float32)
        boxes = tf.stack([hw[:, 0] * 0.1, hw[:, 1] * 0.1, hw[:, 0] * 0.5, hw[:, 1] * 0.5], -1)
        return {
            "detection_boxes": boxes[:, None],
            "detection_scores": tf.fill([b, 1], 0.5),
            "detection_classes": tf.ones([b, 1], tf.int32),
            "num_detections": tf.ones([b], tf.int32),
        }

    gts, dets, _ = collect_detections(detect, ds, progress=False)
    assert len(gts) == 3
    np.testing.assert_allclose(dets[0]["boxes"], [[30, 45, 150, 225]], rtol=1e-6)
