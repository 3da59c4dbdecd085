"""Tests for rfcn_tf.model.losses: float64 references, OHEM selection and its gradients."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.fn_reference import np_smooth_l1, np_softmax_ce

from rfcn_tf.model.losses import rfcn_losses, rpn_losses, smooth_l1


@pytest.mark.parametrize("beta", [1.0, 1.0 / 9.0, 0.0])
def test_smooth_l1_matches_reference(beta):
    x = np.array([-3.0, -0.5, -0.05, 0.0, 0.05, 0.1, 0.5, 2.0])
    np.testing.assert_allclose(smooth_l1(x, beta).numpy(), np_smooth_l1(x, beta), rtol=1e-12)
    # continuous at the transition
    if beta > 0:
        lo = smooth_l1(np.array([beta - 1e-9]), beta).numpy()
        np.testing.assert_allclose(lo, [0.5 * beta], atol=1e-8)


def test_rpn_losses_match_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 20))
    deltas = rng.normal(size=(2, 20, 4)) * 0.5
    labels = rng.choice([-1, 0, 1], size=(2, 20), p=[0.5, 0.3, 0.2])
    targets = np.where((labels == 1)[..., None], rng.normal(size=(2, 20, 4)) * 0.5, 0.0)
    out = rpn_losses(
        logits.astype(np.float32), deltas.astype(np.float32), labels, targets.astype(np.float32)
    )
    assert set(out) == {"rpn_objectness_loss", "rpn_box_loss"}
    sampled, pos = labels >= 0, labels == 1
    p = 1 / (1 + np.exp(-logits))
    ce = -(pos * np.log(p) + (1 - pos) * np.log(1 - p))
    n = sampled.sum()
    np.testing.assert_allclose(out["rpn_objectness_loss"], ce[sampled].sum() / n, rtol=1e-5)
    box = np_smooth_l1(deltas - targets, 1 / 9).sum(-1)
    np.testing.assert_allclose(out["rpn_box_loss"], box[pos].sum() / n, rtol=1e-5)


def test_rpn_losses_nothing_sampled_is_zero():
    out = rpn_losses(
        np.ones((1, 3), np.float32),
        np.ones((1, 3, 4), np.float32),
        -np.ones((1, 3), np.int32),
        np.zeros((1, 3, 4), np.float32),
    )
    assert float(out["rpn_objectness_loss"]) == 0.0 and float(out["rpn_box_loss"]) == 0.0


def _roi_scene(seed, b=2, r=40, c=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, r, c + 1)).astype(np.float32) * 2
    deltas = rng.normal(size=(b, r, 4)).astype(np.float32)
    valid = rng.uniform(size=(b, r)) < 0.8
    fg = valid & (rng.uniform(size=(b, r)) < 0.3)
    classes = np.where(fg, rng.integers(1, c + 1, size=(b, r)), 0).astype(np.int32)
    box_targets = np.where(fg[..., None], rng.normal(size=(b, r, 4)), 0).astype(np.float32)
    yx = rng.uniform(0, 100, (b, r, 2))
    rois = np.concatenate([yx, yx + 20], -1).astype(np.float32)
    targets = {
        "rois": rois,
        "roi_valid": valid,
        "roi_classes": classes,
        "box_targets": box_targets,
        "foreground": fg,
    }
    return logits, deltas, targets


def _np_per_roi(logits, deltas, t, lam=1.0):
    b, r = logits.shape[:2]
    cls = np.array(
        [[np_softmax_ce(logits[i, j], t["roi_classes"][i, j]) for j in range(r)] for i in range(b)]
    )
    box = lam * np_smooth_l1(deltas.astype(np.float64) - t["box_targets"], 1.0).sum(-1)
    return cls, np.where(t["foreground"], box, 0.0)


def test_ohem_selects_hardest_and_only_they_get_gradient():
    logits, deltas, t = _roi_scene(1)
    k = 7
    cls, box = _np_per_roi(logits, deltas, t, lam=2.0)
    total = np.where(t["roi_valid"], cls + box, -np.inf)
    expected = np.zeros_like(t["roi_valid"])
    for i in range(2):
        expected[i, np.argsort(-total[i], kind="stable")[:k]] = True

    lv, dv = tf.Variable(logits), tf.Variable(deltas)
    with tf.GradientTape() as tape:
        out = rfcn_losses(lv, dv, t, sampling="ohem", batch_size_per_image=k, box_loss_weight=2.0)
        loss = out["rfcn_class_loss"] + out["rfcn_box_loss"]
    assert set(out) == {"rfcn_class_loss", "rfcn_box_loss"}
    n = expected.sum()
    np.testing.assert_allclose(out["rfcn_class_loss"], cls[expected].sum() / n, rtol=1e-5)
    np.testing.assert_allclose(out["rfcn_box_loss"], box[expected].sum() / n, rtol=1e-5)
    g_logits, g_deltas = (g.numpy() for g in tape.gradient(loss, [lv, dv]))
    # non-selected RoIs: exactly zero gradient; selected: non-zero class gradient
    np.testing.assert_array_equal(g_logits[~expected], 0.0)
    np.testing.assert_array_equal(g_deltas[~expected], 0.0)
    assert np.all(np.abs(g_logits[expected]).sum(-1) > 0)
    sel_fg = expected & t["foreground"]
    assert sel_fg.any() and np.all(np.abs(g_deltas[sel_fg]).sum(-1) > 0)
    np.testing.assert_array_equal(g_deltas[expected & ~t["foreground"]], 0.0)


def test_ohem_with_nms_and_all_valid_under_k():
    logits, deltas, t = _roi_scene(2, b=1, r=6)
    t["roi_valid"][:] = [True, True, False, True, False, False]
    out = rfcn_losses(
        logits, deltas, t, sampling="ohem", batch_size_per_image=128, ohem_nms_iou=0.99
    )
    cls, box = _np_per_roi(logits, deltas, t)
    v = t["roi_valid"]
    np.testing.assert_allclose(out["rfcn_class_loss"], cls[v].sum() / v.sum(), rtol=1e-5)


def test_balanced_sampling_counts_and_gradients():
    logits, deltas, t = _roi_scene(3, r=60)
    lv = tf.Variable(logits)
    with tf.GradientTape() as tape:
        out = rfcn_losses(
            lv,
            deltas,
            t,
            sampling="balanced",
            batch_size_per_image=16,
            foreground_fraction=0.25,
            seed=5,
        )
    g = tape.gradient(out["rfcn_class_loss"], lv).numpy()
    touched = np.abs(g).sum(-1) > 0
    for i in range(2):
        assert touched[i].sum() == 16
        assert (touched[i] & t["foreground"][i]).sum() == 4
    assert not np.any(touched & ~t["roi_valid"])
    again = rfcn_losses(
        logits,
        deltas,
        t,
        sampling="balanced",
        batch_size_per_image=16,
        foreground_fraction=0.25,
        seed=5,
    )
    np.testing.assert_allclose(again["rfcn_class_loss"], out["rfcn_class_loss"], rtol=1e-6)


def test_no_valid_roi_gives_zero_and_finite_gradients():
    logits, deltas, t = _roi_scene(4)
    t["roi_valid"][:] = False
    t["foreground"][:] = False
    lv = tf.Variable(logits)
    with tf.GradientTape() as tape:
        out = rfcn_losses(lv, deltas, t)
        loss = out["rfcn_class_loss"] + out["rfcn_box_loss"]
    assert float(loss) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, lv).numpy(), 0.0)


def test_bad_sampling_rejected():
    logits, deltas, t = _roi_scene(0)
    with pytest.raises(ValueError, match="sampling must be"):
        rfcn_losses(logits, deltas, t, sampling="random")
