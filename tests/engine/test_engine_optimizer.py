"""Tests for rfcn_tf.engine.optimizer against float64 NumPy references written from the docs."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.engine.optimizer import (
    DetectionSGD,
    WarmupDecaySchedule,
    build_lr_schedule,
    build_optimizer,
    inner_optimizer,
    no_decay_variables,
)


def reference_lr(
    step,
    *,
    base_lr,
    total_steps,
    schedule,
    boundaries=(),
    decay=0.1,
    warmup_steps=0,
    warmup_factor=0.001,
    final_factor=0.0,
):
    if schedule == "step":
        main = decay ** sum(step >= b for b in boundaries)
    elif schedule == "cosine":
        main = final_factor + (1 - final_factor) * 0.5 * (
            1 + math.cos(math.pi * min(step, total_steps) / total_steps)
        )
    else:
        main = 1.0
    warm = 1.0
    if warmup_steps and step < warmup_steps:
        warm = warmup_factor + (1 - warmup_factor) * step / warmup_steps
    return base_lr * main * warm


SCHEDULES = [
    dict(
        base_lr=0.02,
        total_steps=100,
        schedule="step",
        boundaries=[60, 80],
        decay=0.1,
        warmup_steps=10,
        warmup_factor=0.001,
    ),
    dict(
        base_lr=0.01,
        total_steps=50,
        schedule="cosine",
        warmup_steps=5,
        warmup_factor=0.1,
        final_factor=0.05,
    ),
    dict(base_lr=0.1, total_steps=20, schedule="constant"),
    dict(base_lr=0.001, total_steps=30, schedule="step", boundaries=[20], warmup_steps=0),
]


@pytest.mark.parametrize("kwargs", SCHEDULES)
def test_schedule_matches_reference(kwargs):
    schedule = WarmupDecaySchedule(**kwargs)
    for step in range(0, kwargs["total_steps"] + 5):
        expected = reference_lr(step, **kwargs)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_schedule_hand_values():
    s = WarmupDecaySchedule(
        base_lr=0.001,
        total_steps=100,
        schedule="step",
        boundaries=[80],
        warmup_steps=10,
        warmup_factor=0.1,
    )
    assert float(s(0)) == pytest.approx(0.0001)  # warmup starts at factor * lr
    assert float(s(5)) == pytest.approx(0.00055)  # halfway: 0.1 + 0.9 * 0.5
    assert float(s(10)) == pytest.approx(0.001)
    assert float(s(79)) == pytest.approx(0.001)
    assert float(s(80)) == pytest.approx(0.0001)  # R-FCN: 0.001 then 0.0001
    c = WarmupDecaySchedule(base_lr=1.0, total_steps=10, schedule="cosine")
    assert float(c(5)) == pytest.approx(0.5)
    assert float(c(10)) == pytest.approx(0.0, abs=1e-7)
    assert float(c(15)) == pytest.approx(0.0, abs=1e-7)  # held after the end


@pytest.mark.parametrize("kwargs", SCHEDULES)
def test_schedule_get_config_equals_constructor_kwargs(kwargs):
    schedule = WarmupDecaySchedule(**kwargs)
    config = schedule.get_config()
    for key, value in kwargs.items():
        assert config[key] == (list(value) if isinstance(value, (list, tuple)) else value), key
    # Keras round trip through its registry.
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, WarmupDecaySchedule)
    assert float(restored(7)) == pytest.approx(float(schedule(7)))


def test_schedule_copies_boundaries():
    boundaries = [5]
    s = WarmupDecaySchedule(base_lr=1.0, total_steps=10, schedule="step", boundaries=boundaries)
    boundaries.append(6)
    assert s.boundaries == [5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule="poly"), "schedule must be one of"),
        (dict(base_lr=0.0), "base_lr must be > 0"),
        (dict(total_steps=0), "total_steps must be >= 1"),
        (dict(schedule="step", boundaries=[5, 5]), "strictly increasing"),
        (dict(warmup_factor=2.0), "warmup_factor"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, message):
    args = dict(base_lr=0.1, total_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        WarmupDecaySchedule(**args)


def test_build_lr_schedule_rejects_boundary_outside_run():
    with pytest.raises(ValueError, match="lr boundary 120 is outside"):
        build_lr_schedule(base_lr=0.1, total_steps=100, schedule="step", boundaries=[50, 120])


def _reference_sgd(weights, grads_per_step, *, lrs, momentum, weight_decay, clip, decayed):
    """float64 SGD: clip the global norm, add wd * w (decayed variables only), momentum."""
    weights = [np.array(w, np.float64) for w in weights]
    velocity = [np.zeros_like(w) for w in weights]
    for lr, grads in zip(lrs, grads_per_step):
        grads = [np.array(g, np.float64) for g in grads]
        if clip is not None:
            norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
            grads = [g * clip / max(norm, clip) for g in grads]
        grads = [g + weight_decay * w if d else g for g, w, d in zip(grads, weights, decayed)]
        velocity = [momentum * v - lr * g for v, g in zip(velocity, grads)]
        weights = [w + v for w, v in zip(weights, velocity)]
    return weights


@pytest.mark.parametrize("clip", [None, 0.7])
def test_detection_sgd_matches_reference(clip):
    rng = np.random.default_rng(3)
    kernel0 = rng.normal(size=(3, 2)).astype(np.float32)
    bias0 = rng.normal(size=(2,)).astype(np.float32)
    gamma0 = rng.normal(size=(2,)).astype(np.float32)
    kernel = keras.Variable(kernel0, name="kernel")
    bias = keras.Variable(bias0, name="bias")
    gamma = keras.Variable(gamma0, name="gamma")
    variables = [kernel, bias, gamma]
    schedule = build_lr_schedule(
        base_lr=0.1,
        total_steps=6,
        schedule="step",
        boundaries=[3],
        warmup_steps=2,
        warmup_factor=0.5,
    )
    optimizer = build_optimizer(
        variables=variables, learning_rate=schedule, momentum=0.9, weight_decay=0.05, clip_norm=clip
    )
    grads = [[rng.normal(size=v.shape).astype(np.float32) for v in variables] for _ in range(6)]
    for step_grads in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], variables))
    lrs = [
        reference_lr(
            s,
            base_lr=0.1,
            total_steps=6,
            schedule="step",
            boundaries=[3],
            warmup_steps=2,
            warmup_factor=0.5,
        )
        for s in range(6)
    ]
    expected = _reference_sgd(
        [kernel0, bias0, gamma0],
        grads,
        lrs=lrs,
        momentum=0.9,
        weight_decay=0.05,
        clip=clip,
        decayed=[True, False, False],
    )
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


def test_weight_decay_is_coupled_and_skips_rank1_variables():
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    optimizer = build_optimizer(
        variables=[kernel, bias], learning_rate=0.1, momentum=0.9, weight_decay=0.5
    )
    zeros = [tf.zeros([2, 2]), tf.zeros([2])]
    optimizer.apply_gradients(zip(zeros, [kernel, bias]))
    optimizer.apply_gradients(zip(zeros, [kernel, bias]))
    # step 1: v = -0.1 * 0.5 * 1 = -0.05 -> w = 0.95; step 2: g = 0.475, v = 0.9 * -0.05 - 0.0475
    np.testing.assert_allclose(kernel.numpy(), 0.95 - 0.045 - 0.0475, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), 1.0)  # bias: no decay at all
    assert [v.name for v in no_decay_variables([kernel, bias])] == ["bias"]


def test_detection_sgd_config_and_validation():
    optimizer = DetectionSGD(
        learning_rate=0.1, momentum=0.8, weight_decay=0.01, clip_global_norm=2.0
    )
    config = optimizer.get_config()
    assert config["clip_global_norm"] == 2.0 and config["momentum"] == 0.8
    assert config["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="clip_global_norm must be > 0"):
        DetectionSGD(clip_global_norm=0.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        DetectionSGD(weight_decay=-1.0)
    with pytest.raises(ValueError, match="no variables"):
        build_optimizer(variables=[], learning_rate=0.1)


def test_loss_scaling_optimizer_takes_the_same_step():
    """The mixed-precision wrapper (dynamic loss scale) must not change a float32 step."""
    results = []
    for loss_scaling in (False, True):
        w = keras.Variable(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), name="kernel")
        schedule = build_lr_schedule(base_lr=0.05, total_steps=4, schedule="cosine")
        optimizer = build_optimizer(
            variables=[w],
            learning_rate=schedule,
            weight_decay=0.01,
            clip_norm=1.0,
            loss_scaling=loss_scaling,
        )
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaling
        assert isinstance(inner_optimizer(optimizer), DetectionSGD)
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w * w * w)
                scaled = optimizer.scale_loss(loss) if loss_scaling else loss
            optimizer.apply_gradients([(tape.gradient(scaled, w), w)])
        results.append(w.numpy())
        assert int(inner_optimizer(optimizer).iterations.numpy()) == 3
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
