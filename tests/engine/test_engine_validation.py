"""Validation during training: best-checkpoint selection, early stop, resume; and weight EMA.

The stand-in detector trains with the real engine (run_training, checkpoints, hooks); the
validation metric is a stand-in sequence (step -> value), so which step is best and when the
run stops are known in advance.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn

from rfcn_tf.engine import schemes
from rfcn_tf.engine.best_checkpoint import BestCheckpoint, find_best_checkpoint, metric_value
from rfcn_tf.engine.checkpoints import read_checkpoint_meta, restore_model_weights
from rfcn_tf.engine.ema import WeightEMA
from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.validation import ValidationHook, use_best_weights


def _metrics(value):
    return {
        "coco": {"AP": value / 2, "AP50": value, "AP75": value / 3},
        "voc07": {"mAP": value},
        "voc2010": {"mAP": value},
        "num_images": 4,
    }


def weights_of(model):
    return [np.array(v.numpy()) for v in model.trainable_variables]


def _optimizer_fn(variables, steps):
    return build_optimizer(variables=variables, learning_rate=0.05)


class StandInValidation:
    """``evaluate_fn`` returning ``values[step]``; records the weights each step was scored with."""

    def __init__(self, model, values):
        self.model = model
        self.values = dict(values)
        self.calls = []
        self.weights = {}

    def __call__(self, step):
        self.calls.append(step)
        self.weights[step] = weights_of(self.model)
        return _metrics(self.values[step])


def _train(tmp_path, model, validation, *, steps, every, patience, ema=None, metric="coco/AP50"):
    best = BestCheckpoint(
        str(tmp_path), model=model, num_classes=2, metric=metric, patience=patience
    )
    hook = ValidationHook(validation, every=every, best=best, ema=ema)
    result = schemes.run_training(
        model=model,
        strategy=tf.distribute.get_strategy(),
        dataset_fn=dataset_fn(2),
        stages=schemes.build_stages("joint", steps=steps),
        optimizer_fn=_optimizer_fn,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        num_classes=2,
        global_batch_size=2,
        checkpoint_every=100,
        hooks_fn=lambda stage, total: [hook],
        ema=ema,
    )
    return result, best


def test_best_checkpoint_and_early_stop_follow_the_metric_sequence(tmp_path):
    # Validations at 2, 4, ..., 20; best at step 6 (0.5); 8 ties (no gain), 10 and 12 are
    # lower: the third validation without gain (step 12) stops the run with patience 3.
    values = {2: 0.1, 4: 0.3, 6: 0.5, 8: 0.5, 10: 0.2, 12: 0.45, 14: 0.9, 16: 0.9, 18: 0.9, 20: 0.9}
    model = TinyDetector()
    validation = StandInValidation(model, values)
    result, _ = _train(tmp_path, model, validation, steps=20, every=2, patience=3)

    assert validation.calls == [2, 4, 6, 8, 10, 12]
    assert result.step == 12 and result.total_steps == 20
    assert result.stop_reason and "3 validations without improvement" in result.stop_reason
    record = json.loads((tmp_path / "best.json").read_text())
    assert record["metric"] == "coco/AP50" and record["step"] == 6 and record["value"] == 0.5
    assert record["checkpoint"] == os.path.join("checkpoints", "best", "ckpt-6")
    assert [h["step"] for h in record["history"]] == [2, 4, 6, 8, 10, 12]
    # Only the best is kept in checkpoints/best; it holds the weights scored at step 6.
    prefix = find_best_checkpoint(str(tmp_path))
    assert prefix == str(tmp_path / "checkpoints" / "best" / "ckpt-6")
    assert read_checkpoint_meta(prefix).step == 6
    assert sorted(os.listdir(tmp_path / "checkpoints" / "best")) == [
        "checkpoint",
        "ckpt-6.data-00000-of-00001",
        "ckpt-6.index",
    ]
    fresh = TinyDetector(seed=5)
    restore_model_weights(fresh, prefix, num_classes=2)
    for got, want in zip(weights_of(fresh), validation.weights[6]):
        np.testing.assert_array_equal(got, want)
    # The latest checkpoints are untouched beside it: the run ended (stopped) at 12.
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-12")

    # Rerunning the stopped run stops again at once: no step, no validation, same best.
    model2 = TinyDetector()
    validation2 = StandInValidation(model2, values)
    result2, best2 = _train(tmp_path, model2, validation2, steps=20, every=2, patience=3)
    assert result2.step == 12 and result2.stop_reason and validation2.calls == []
    assert best2.best_step == 6

    # use_best_weights puts the best into a model and reports step and value.
    record = use_best_weights(model2, str(tmp_path), num_classes=2)
    assert record["step"] == 6 and record["value"] == 0.5 and record["checkpoint"] == prefix
    np.testing.assert_array_equal(weights_of(model2)[0], validation.weights[6][0])


def test_without_patience_the_run_goes_on_and_the_last_step_is_validated(tmp_path):
    values = {3: 0.2, 6: 0.1, 7: 0.6}
    model = TinyDetector()
    validation = StandInValidation(model, values)
    result, best = _train(tmp_path, model, validation, steps=7, every=3, patience=0)
    assert validation.calls == [3, 6, 7]  # every 3 steps and after the last one
    assert result.step == 7 and result.stop_reason is None
    assert best.best_step == 7 and find_best_checkpoint(str(tmp_path)).endswith("ckpt-7")


def test_nan_never_becomes_best_and_metric_names_are_checked(tmp_path):
    best = BestCheckpoint(str(tmp_path), model=None, metric="voc07/mAP", patience=2)
    assert not best.update(1, math.nan) and best.best_step is None
    assert best.update(2, 0.0) and best.best_step == 2
    assert not best.update(3, 0.0)  # equal is no gain
    assert best.update(4, 0.01)
    assert best.validations_without_improvement() == 0 and not best.should_stop()
    best.update(5, 0.0)
    best.update(6, 0.0)
    assert best.should_stop()
    assert find_best_checkpoint(str(tmp_path)) is None  # record only, no model saved
    nan_only = BestCheckpoint(str(tmp_path / "nan"), model=None, patience=1)
    nan_only.update(1, math.nan)
    assert nan_only.should_stop()
    hook = ValidationHook(lambda step: _metrics(math.nan), every=1, best=nan_only)
    assert "no finite value yet" in hook._stop_message()
    assert metric_value(_metrics(0.7), "coco/AP") == pytest.approx(0.35)
    with pytest.raises(ValueError, match="reports no 'AP60' under 'coco'"):
        metric_value(_metrics(0.7), "coco/AP60")
    with pytest.raises(ValueError, match="train.best_metric must look like"):
        BestCheckpoint(str(tmp_path), model=None, metric="AP50")


def test_ema_follows_the_reference_recursion_and_swaps_weights_back():
    model = TinyDetector()
    ema = WeightEMA(model, decay=0.9)
    variable = model.trainable_variables[0]
    start = variable.numpy().copy()
    shadow = start.astype(np.float64)
    rng = np.random.default_rng(0)
    for n in range(5):
        variable.assign(start + rng.normal(size=start.shape).astype(np.float32))
        ema.update()
        decay = min(0.9, (1 + n) / (10 + n))
        shadow = decay * shadow + (1 - decay) * variable.numpy().astype(np.float64)
    np.testing.assert_allclose(ema.shadows[0].numpy(), shadow, atol=1e-5)
    assert ema.updates == 5
    raw = variable.numpy().copy()
    with ema.swapped():
        np.testing.assert_allclose(variable.numpy(), shadow, atol=1e-5)
    np.testing.assert_array_equal(variable.numpy(), raw)
    ema.copy_to_model()
    np.testing.assert_allclose(variable.numpy(), shadow, atol=1e-5)
    with pytest.raises(ValueError, match=r"train.ema_decay must lie in \(0, 1\)"):
        WeightEMA(model, decay=1.0)


def _ema_run(tmp_path, steps, stop_at=None):
    model = TinyDetector()
    ema = WeightEMA(model, decay=0.8)

    class Interrupt(schemes.Hook):
        def after_step(self, loop, step, logs):
            if step == stop_at:
                raise KeyboardInterrupt

    try:
        schemes.run_training(
            model=model,
            strategy=tf.distribute.get_strategy(),
            dataset_fn=dataset_fn(2),
            stages=schemes.build_stages("joint", steps=steps),
            optimizer_fn=_optimizer_fn,
            checkpoint_dir=str(tmp_path),
            num_classes=2,
            global_batch_size=2,
            checkpoint_every=2,
            hooks_fn=lambda stage, total: [Interrupt()],
            ema=ema,
            data_resume="skip",
        )
    except KeyboardInterrupt:
        pass
    return model, ema


def test_ema_is_checkpointed_and_validation_and_best_use_it(tmp_path):
    # Interrupted at 4 (checkpoint at 4) and resumed: the EMA equals an uninterrupted run's.
    _, ema_full = _ema_run(tmp_path / "full", 6)
    _ema_run(tmp_path / "cut", 6, stop_at=4)
    _, ema_resumed = _ema_run(tmp_path / "cut", 6)
    assert ema_resumed.updates == ema_full.updates == 6
    for a, b in zip(ema_resumed.shadows, ema_full.shadows):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)

    # Validation scores the EMA weights and the best checkpoint stores them.
    model = TinyDetector()
    ema = WeightEMA(model, decay=0.5)
    seen = {}

    def evaluate(step):
        seen[step] = weights_of(model)
        return _metrics(0.1 * step)

    _train(tmp_path / "val", model, evaluate, steps=4, every=2, patience=0, ema=ema)
    for got, shadow in zip(seen[4][:2], ema.shadows[:2]):
        np.testing.assert_allclose(got, shadow.numpy(), atol=1e-6)
    assert not np.allclose(weights_of(model)[0], ema.shadows[0].numpy())  # raw weights back
    fresh = TinyDetector(seed=3)
    restore_model_weights(fresh, find_best_checkpoint(str(tmp_path / "val")), num_classes=2)
    np.testing.assert_allclose(weights_of(fresh)[0], ema.shadows[0].numpy(), atol=1e-6)


def test_training_features_refuse_early_stop_without_validation_and_deliver_ema(tmp_path):
    from rfcn_tf.config import ConfigError, load_config
    from rfcn_tf.engine.features import TrainingFeatures

    strategy = tf.distribute.get_strategy()
    model = TinyDetector()
    with pytest.raises(ConfigError, match="early_stop_patience=2 needs validation"):
        TrainingFeatures(
            load_config("shapes_tiny", ["train.early_stop_patience=2"]),
            model=model,
            strategy=strategy,
            class_names=["a", "b"],
            work_dir=str(tmp_path),
        )
    cfg = load_config("shapes_tiny", ["train.ema_decay=0.5"])
    features = TrainingFeatures(
        cfg, model=model, strategy=strategy, class_names=["a", "b"], work_dir=str(tmp_path)
    )
    assert features.hooks() == [] and features.run_training_kwargs()["data_resume"] == "iterator"
    model.trainable_variables[0].assign(model.trainable_variables[0] + 1.0)
    features.ema.update()
    final = features.finalize()  # no best checkpoint: the EMA weights are delivered
    assert final == {"weights": "ema", "best": None}
    np.testing.assert_allclose(
        model.trainable_variables[0].numpy(), features.ema.shadows[0].numpy()
    )
    assert TrainingFeatures.summary_line(final) is None
