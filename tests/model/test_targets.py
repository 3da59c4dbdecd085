"""Tests for rfcn_tf.model.targets on hand-built scenes and against the float64 reference."""

import numpy as np
from helpers.fn_reference import np_decode, np_encode, np_iou, np_match

from rfcn_tf.model.anchors import AnchorGenerator
from rfcn_tf.model.roi_sampling import roi_targets
from rfcn_tf.model.targets import anchor_validity, rpn_targets

ANCHORS = AnchorGenerator(stride=16, scales=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))(8, 8).numpy()
BIG = dict(batch_size_per_image=10_000, positive_fraction=1.0)  # sample everything


def _gt(rows, g=4):
    boxes = np.full((g, 4), -1.0, np.float32)
    mask = np.zeros(g, bool)
    if rows:
        boxes[: len(rows)] = rows
        mask[: len(rows)] = True
    return boxes, mask


def test_rpn_no_ground_truth_only_negatives():
    boxes, mask = _gt([])
    out = rpn_targets(ANCHORS, boxes[None], mask[None], [[128, 128]], seed=0)
    labels = out["labels"].numpy()
    assert not np.any(labels == 1)
    assert np.sum(labels == 0) == 256  # 384 usable anchors, 256 sampled
    np.testing.assert_array_equal(out["box_targets"], 0.0)


def test_rpn_tiny_box_gets_its_best_anchor():
    boxes, mask = _gt([[50, 60, 58, 66]])  # 8 x 6 pixels: IoU < 0.3 with every anchor
    out = rpn_targets(ANCHORS, boxes[None], mask[None], [[128, 128]], seed=0, **BIG)
    labels = out["labels"].numpy()[0]
    iou = np_iou(ANCHORS, boxes[:1])[:, 0]
    assert iou.max() < 0.3
    # the 32-pixel anchors of all ratios containing the box tie at 48 / 1024 (exactly, up to
    # rounding of the anchor sides): ties are all positive
    best = np.flatnonzero(np.isclose(iou, iou.max(), rtol=1e-6, atol=0))
    assert len(best) == 7
    np.testing.assert_array_equal(np.flatnonzero(labels == 1), best)
    # the target moves the anchor exactly onto the box
    decoded = np_decode(out["box_targets"].numpy()[0, best], ANCHORS[best])
    np.testing.assert_allclose(decoded, np.repeat(boxes[:1], len(best), 0), atol=1e-3)


def test_rpn_crowded_scene_matches_reference():
    rows = [[10, 10, 60, 50], [20, 15, 70, 55], [64, 64, 128, 128], [0, 80, 40, 112]]
    boxes, mask = _gt(rows, g=6)
    out = rpn_targets(ANCHORS, boxes[None], mask[None], [[128, 128]], seed=0, **BIG)
    iou = np_iou(ANCHORS, boxes)
    ref_idx, ref_labels = np_match(iou, mask, 0.3, 0.7, True)
    np.testing.assert_array_equal(out["labels"].numpy()[0], ref_labels)
    np.testing.assert_array_equal(out["matched_labels"].numpy()[0], ref_labels)
    pos = ref_labels == 1
    assert pos.sum() >= 4  # every box has at least one anchor
    np.testing.assert_array_equal(out["matched_gt_index"].numpy()[0][pos], ref_idx[pos])
    np.testing.assert_allclose(
        out["box_targets"].numpy()[0][pos], np_encode(boxes[ref_idx[pos]], ANCHORS[pos]), atol=1e-4
    )
    np.testing.assert_array_equal(out["box_targets"].numpy()[0][~pos], 0.0)


def test_rpn_sampling_caps_positives():
    rows = [[0, 0, 64, 64], [64, 64, 128, 128], [0, 64, 64, 128], [64, 0, 128, 64]]
    boxes, mask = _gt(rows)
    out = rpn_targets(
        ANCHORS,
        boxes[None],
        mask[None],
        [[128, 128]],
        batch_size_per_image=8,
        positive_fraction=0.25,
        seed=1,
    )
    labels = out["labels"].numpy()[0]
    assert np.sum(labels == 1) == 2 and np.sum(labels == 0) == 6
    unsampled = out["matched_labels"].numpy()[0]
    assert np.sum(unsampled == 1) > 2


def test_anchor_validity_border_and_padding():
    anchors = np.array(
        [
            [-8, -8, 24, 24],  # centre (8, 8), crosses the top-left border
            [40, 40, 56, 56],  # inside
            [100, 8, 132, 40],  # centre y 116 >= height 100: in the padding
            [70, 70, 102, 102],
        ],  # centre inside, crosses bottom-right by 2
        np.float32,
    )
    shapes = [[100, 100]]
    np.testing.assert_array_equal(anchor_validity(anchors, shapes), [[True, True, False, True]])
    np.testing.assert_array_equal(
        anchor_validity(anchors, shapes, allowed_border=0.0), [[False, True, False, False]]
    )
    np.testing.assert_array_equal(
        anchor_validity(anchors, shapes, allowed_border=2.0), [[False, True, False, True]]
    )
    # rpn_targets ignores the unusable ones
    boxes, mask = _gt([[40, 40, 56, 56]])
    out = rpn_targets(anchors, boxes[None], mask[None], shapes, allowed_border=0.0, **BIG)
    np.testing.assert_array_equal(out["labels"].numpy()[0], [-1, 1, -1, -1])


def test_rpn_batch_of_two_images_independent():
    b1, m1 = _gt([[10, 10, 60, 50]])
    b2, m2 = _gt([])
    out = rpn_targets(
        ANCHORS, np.stack([b1, b2]), np.stack([m1, m2]), [[128, 128], [64, 128]], seed=0, **BIG
    )
    single = rpn_targets(ANCHORS, b1[None], m1[None], [[128, 128]], seed=0, **BIG)
    np.testing.assert_array_equal(out["labels"].numpy()[0], single["labels"].numpy()[0])
    lab2 = out["labels"].numpy()[1]
    assert not np.any(lab2 == 1)
    # anchors centred below row 64 of the 64-high second image are ignored
    centre_y = (ANCHORS[:, 0] + ANCHORS[:, 2]) / 2
    assert np.all(lab2[centre_y >= 64] == -1) and np.all(lab2[centre_y < 64] == 0)


def test_roi_targets_hand_built():
    proposals = np.zeros((2, 4, 4), np.float32)
    proposals[0, :3] = [
        [0, 0, 10, 10],  # IoU 1 with gt 0 -> class 3
        [0, 0, 10, 20],  # IoU 0.5 with gt 0 -> foreground (>= 0.5)
        [50, 50, 60, 60],
    ]  # no overlap -> background
    proposals[1, :2] = [[0, 0, 10, 10], [5, 5, 20, 20]]
    num = np.array([3, 2], np.int32)
    gt0, m0 = _gt([[0, 0, 10, 10], [40, 40, 80, 80]], g=3)
    gt1, m1 = _gt([], g=3)
    classes = np.array([[3, 1, -1], [-1, -1, -1]], np.int32)
    out = roi_targets(proposals, num, np.stack([gt0, gt1]), classes, np.stack([m0, m1]))
    assert out["rois"].shape == (2, 7, 4)
    np.testing.assert_array_equal(out["roi_valid"], [[1, 1, 1, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["foreground"], [[1, 1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        out["roi_classes"], [[3, 3, 0, 0, 3, 1, 0], [0, 0, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_allclose(out["matched_iou"].numpy()[0, :3], [1.0, 0.5, 100 / 1600])
    # appended gt rows are the gt boxes, invalid rows are zeros
    np.testing.assert_array_equal(out["rois"].numpy()[0, 4:6], gt0[:2])
    np.testing.assert_array_equal(out["rois"].numpy()[0, [3, 6]], 0.0)
    np.testing.assert_array_equal(out["rois"].numpy()[1, 2:], 0.0)
    # targets (weights 10, 10, 5, 5) decode back onto the matched gt
    t = out["box_targets"].numpy()
    np.testing.assert_allclose(
        np_decode(t[0, 1], proposals[0, 1], (10, 10, 5, 5)), gt0[0], atol=1e-4
    )
    np.testing.assert_allclose(
        t[0, 1], np_encode(gt0[0], proposals[0, 1], (10, 10, 5, 5)), atol=1e-5
    )
    np.testing.assert_array_equal(t[0, 2], 0.0)
    np.testing.assert_array_equal(t[1], 0.0)


def test_roi_targets_background_low_threshold_and_reference():
    rng = np.random.default_rng(5)
    yx = rng.uniform(0, 80, (2, 30, 2))
    proposals = np.concatenate([yx, yx + rng.uniform(5, 40, (2, 30, 2))], -1).astype(np.float32)
    gt = np.stack([_gt([[10, 10, 50, 40], [30, 30, 90, 90]])[0], _gt([[0, 0, 30, 30]])[0]])
    mask = gt[:, :, 0] >= 0
    classes = np.where(mask, np.array([[2, 5, 0, 0], [7, 0, 0, 0]]), -1).astype(np.int32)
    num = np.array([30, 25], np.int32)
    out = roi_targets(proposals, num, gt, classes, mask, foreground_iou=0.5, background_iou_low=0.1)
    for b in range(2):
        rois = np.concatenate([proposals[b], gt[b]])
        real = np.concatenate([np.arange(30) < num[b], mask[b]])
        iou = np_iou(rois, gt[b])
        idx, labels = np_match(iou, mask[b], 0.1, 0.5, False, (-1, 0, 1))
        labels = np.where(real, labels, -1)
        np.testing.assert_array_equal(out["roi_valid"].numpy()[b], labels >= 0)
        np.testing.assert_array_equal(out["foreground"].numpy()[b], labels == 1)
        np.testing.assert_array_equal(
            out["roi_classes"].numpy()[b], np.where(labels == 1, classes[b][idx], 0)
        )
        fg = labels == 1
        np.testing.assert_allclose(
            out["box_targets"].numpy()[b][fg],
            np_encode(gt[b][idx[fg]], rois[fg], (10, 10, 5, 5)),
            atol=1e-4,
        )
    assert np.any(~out["roi_valid"].numpy()[:, :25])  # some RoIs fall below 0.1


def test_targets_in_one_tf_function_unknown_sizes_no_retrace():
    import tensorflow as tf

    traces = []
    gen = AnchorGenerator(stride=16, scales=(32,), aspect_ratios=(1.0,))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None, 2], tf.int32),
        ]
    )
    def f(anchors, proposals, num, gt, classes, mask, shapes):
        traces.append(1)
        a = rpn_targets(anchors, gt, mask, shapes, batch_size_per_image=16, seed=0)
        r = roi_targets(proposals, num, gt, classes, mask)
        return a["labels"], r["roi_valid"], r["roi_classes"]

    for b, hw, p, g in [(1, 4, 5, 2), (2, 6, 3, 1), (2, 3, 4, 3)]:
        gt = np.tile(np.array([[[4, 4, 30, 30]]], np.float32), (b, g, 1))
        mask = np.zeros((b, g), bool)
        mask[0, 0] = True
        proposals = np.tile(np.array([[[0, 0, 30, 30]]], np.float32), (b, p, 1))
        labels, valid, classes = f(
            gen(hw, hw),
            proposals,
            np.full([b], p, np.int32),
            gt,
            np.full((b, g), 2, np.int32),
            mask,
            np.full((b, 2), 16 * hw, np.int32),
        )
        assert labels.shape == (b, hw * hw) and valid.shape == (b, p + g)
        assert np.sum(labels.numpy()[0] == 1) >= 1 and not np.any(labels.numpy()[1:] == 1)
        assert classes.numpy()[0, p] == 2  # the appended gt row
        assert np.sum(labels.numpy() >= 0, axis=1).max() <= 16
    assert len(traces) == 1
