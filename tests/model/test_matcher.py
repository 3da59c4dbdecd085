"""Tests for rfcn_tf.model.matcher.Matcher on hand-built similarity matrices."""

import numpy as np
import pytest
from helpers.fn_reference import np_match

from rfcn_tf.model.matcher import Matcher


def test_interval_labels_and_boundaries():
    sim = np.array([[0.1], [0.3], [0.5], [0.7], [0.95], [0.2999]], np.float32)
    idx, labels = Matcher(allow_low_quality_matches=False)(sim, [True])
    # [0, 0.3) negative, [0.3, 0.7) ignored, [0.7, 1] positive
    np.testing.assert_array_equal(labels, [0, -1, -1, 1, 1, 0])
    np.testing.assert_array_equal(idx, 0)


def test_best_anchor_rule_with_ties_keeps_own_argmax():
    # gt 0 best IoU is 0.4 (anchors 1 and 2 tie); gt 1 is matched normally by anchor 3.
    sim = np.array([[0.1, 0.0], [0.4, 0.0], [0.4, 0.5], [0.0, 0.8]], np.float32)
    idx, labels = Matcher()(sim, [True, True])
    np.testing.assert_array_equal(labels, [0, 1, 1, 1])
    # anchor 2 is forced positive by gt 0 but keeps its own best ground truth (gt 1)
    np.testing.assert_array_equal(idx, [0, 0, 1, 1])
    _, no_lq = Matcher(allow_low_quality_matches=False)(sim, [True, True])
    np.testing.assert_array_equal(no_lq, [0, -1, -1, 1])


def test_gt_without_overlap_forces_nothing():
    sim = np.array([[0.0, 0.9], [0.0, 0.1]], np.float32)
    _, labels = Matcher()(sim, [True, True])
    np.testing.assert_array_equal(labels, [1, 0])


def test_padding_columns_never_match():
    sim = np.array([[0.2, 0.99], [0.25, 0.99]], np.float32)
    idx, labels = Matcher()(sim, [True, False])
    np.testing.assert_array_equal(idx, [0, 0])
    # only gt 0 counts: its best anchor (1, IoU 0.25) is forced positive, anchor 0 negative
    np.testing.assert_array_equal(labels, [0, 1])


def test_no_ground_truth_all_negative():
    sim = np.array([[0.9, 0.8], [0.5, 0.0]], np.float32)
    idx, labels = Matcher()(sim, [False, False])
    np.testing.assert_array_equal(labels, [0, 0])
    np.testing.assert_array_equal(idx, [0, 0])
    # zero columns at all
    idx, labels = Matcher()(np.zeros((3, 0), np.float32), np.zeros((0,), bool))
    np.testing.assert_array_equal(labels, [0, 0, 0])


def test_batched_matches_reference():
    rng = np.random.default_rng(3)
    sim = rng.uniform(0, 0.9, (3, 40, 5)).astype(np.float32)
    sim[rng.uniform(size=sim.shape) < 0.5] = 0.0
    mask = np.array([[True] * 5, [True, True, False, False, False], [False] * 5])
    idx, labels = Matcher()(sim, mask)
    assert idx.shape == (3, 40) and labels.shape == (3, 40)
    for b in range(3):
        ref_idx, ref_labels = np_match(sim[b].astype(np.float64), mask[b], 0.3, 0.7, True)
        np.testing.assert_array_equal(labels[b], ref_labels)
        if mask[b].any():
            np.testing.assert_array_equal(idx[b], ref_idx)


def test_custom_labels_and_validation():
    m = Matcher(thresholds=(0.1, 0.5), labels=(-1, 0, 1), allow_low_quality_matches=False)
    _, labels = m(np.array([[0.05], [0.2], [0.6]], np.float32), [True])
    np.testing.assert_array_equal(labels, [-1, 0, 1])
    assert m.get_config() == {
        "thresholds": (0.1, 0.5),
        "labels": (-1, 0, 1),
        "allow_low_quality_matches": False,
    }
    with pytest.raises(ValueError, match="non-decreasing"):
        Matcher(thresholds=(0.7, 0.3))
    with pytest.raises(ValueError, match="labels must have"):
        Matcher(thresholds=(0.3,), labels=(0, -1, 1))
