"""Tests for rfcn_tf.model.sampler: balanced sampling counts/determinism and OHEM selection."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.fn_reference import np_iou

from rfcn_tf.model.roi_sampling import ohem_select as select_hardest
from rfcn_tf.model.sampler import sample_balanced


def _labels(num_pos, num_neg, num_ign, rng):
    lab = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ign, np.int32)
    return rng.permutation(lab)


@pytest.mark.parametrize(
    "num_pos, num_neg, exp_pos, exp_neg",
    [
        (100, 500, 8, 24),  # plenty of both: 8 = 32 * 0.25 positives
        (3, 500, 3, 29),  # few positives: filled with negatives
        (3, 10, 3, 10),  # too few of both: everything
        (0, 0, 0, 0),  # nothing to sample
    ],
)
def test_balanced_counts(num_pos, num_neg, exp_pos, exp_neg):
    rng = np.random.default_rng(0)
    labels = np.stack([_labels(num_pos, num_neg, 50, rng), _labels(num_pos, num_neg, 50, rng)])
    sel = sample_balanced(labels, batch_size_per_image=32, positive_fraction=0.25, seed=7).numpy()
    assert sel.shape == labels.shape and sel.dtype == bool
    for b in range(2):
        assert np.sum(sel[b] & (labels[b] == 1)) == exp_pos
        assert np.sum(sel[b] & (labels[b] == 0)) == exp_neg
        assert not np.any(sel[b] & (labels[b] == -1))


def test_balanced_determinism_and_randomness():
    rng = np.random.default_rng(1)
    labels = np.stack([_labels(40, 400, 10, rng)])
    kw = dict(batch_size_per_image=16, positive_fraction=0.5)
    a = sample_balanced(labels, seed=3, **kw).numpy()
    b = sample_balanced(labels, seed=3, **kw).numpy()
    c = sample_balanced(labels, seed=4, **kw).numpy()
    d = sample_balanced(labels, seed=tf.constant([3, 0]), **kw).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a, c)
    # unseeded draws differ from call to call but keep the counts
    e, f = (sample_balanced(labels, **kw).numpy() for _ in range(2))
    assert not np.array_equal(e, f) and e.sum() == f.sum() == 16


def test_balanced_is_roughly_uniform_over_positives():
    labels = np.array([[1] * 10 + [0] * 10], np.int32)
    counts = np.zeros(20)
    for s in range(200):
        counts += sample_balanced(
            labels, batch_size_per_image=4, positive_fraction=0.5, seed=s
        ).numpy()[0]
    # each positive picked with probability 2/10 (expected 40 of 200), negatives likewise
    assert counts.sum() == 800
    assert counts.min() > 15 and counts.max() < 70


def test_balanced_inside_tf_function_unknown_n():
    f = tf.function(
        lambda l: sample_balanced(l, batch_size_per_image=8, positive_fraction=0.5, seed=1),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    for n in (5, 30):
        labels = np.zeros((2, n), np.int32)
        labels[:, :2] = 1
        sel = f(labels).numpy()
        assert sel.shape == (2, n)
        np.testing.assert_array_equal(sel.sum(1), min(8, n))


def test_select_hardest_takes_highest_valid_losses():
    rng = np.random.default_rng(2)
    losses = rng.uniform(size=(2, 50)).astype(np.float32)
    valid = rng.uniform(size=(2, 50)) < 0.7
    valid[1, :] = False
    valid[1, :3] = True
    sel = select_hardest(losses, valid, num_selected=10).numpy()
    masked = np.where(valid[0], losses[0], -1)
    np.testing.assert_array_equal(np.flatnonzero(sel[0]), np.sort(np.argsort(-masked)[:10]))
    np.testing.assert_array_equal(np.flatnonzero(sel[1]), [0, 1, 2])  # fewer valid than 10


def test_select_hardest_ties_are_deterministic_lower_index():
    losses = np.array([[1.0, 2.0, 2.0, 2.0, 0.5]], np.float32)
    sel = select_hardest(losses, np.ones_like(losses, bool), num_selected=2).numpy()
    np.testing.assert_array_equal(sel[0], [False, True, True, False, False])


def test_select_hardest_with_nms_skips_duplicates():
    boxes = np.array(
        [[[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 10]]],
        np.float32,
    )
    losses = np.array([[5.0, 4.0, 3.0, 1.0, 9.0]], np.float32)
    valid = np.array([[True, True, True, True, False]])
    sel = select_hardest(losses, valid, num_selected=2, boxes=boxes, nms_iou=0.7).numpy()
    # 0 beats its duplicate 1; the invalid copy 4 (highest loss) is never taken nor suppresses
    np.testing.assert_array_equal(sel[0], [True, False, True, False, False])
    assert np_iou(boxes[0, 0], boxes[0, 1])[0, 0] > 0.7
    with pytest.raises(ValueError, match="needs boxes"):
        select_hardest(losses, valid, num_selected=2, nms_iou=0.7)
