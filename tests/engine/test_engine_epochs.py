"""Schedules in epochs: the step counts they derive (rfcn_tf/engine/epochs.py).

The derivation on 2 replicas (same steps, each image read ``epochs`` times) is in
test_engine_replicas.py; here the arithmetic and its errors, against hand-computed numbers.
"""

from __future__ import annotations

import pytest

from rfcn_tf.config import ConfigError, load_config
from rfcn_tf.engine.epochs import epoch_steps, resolve_epochs
from rfcn_tf.engine.features import resolve_schedule


def _cfg(*overrides):
    return load_config("shapes_tiny", list(overrides))


def test_steps_warmup_boundaries_and_eval_interval_scale_with_the_epoch():
    # 292 images, global batch 2: 146 steps per epoch.
    cfg = _cfg(
        "train.batch_size=2",
        "train.epochs=12",
        "train.warmup_epochs=0.5",
        "train.schedule=step",
        "train.lr_epochs=[8, 11]",
        "train.eval_every_epochs=2",
    )
    resolved = resolve_epochs(cfg, 292).train
    assert resolved.steps == 12 * 146
    assert resolved.warmup_steps == 73
    assert resolved.lr_steps == [8 * 146, 11 * 146]
    assert resolved.eval_every == 2 * 146
    # Twice the data: every count doubles; a 4x global batch: a quarter (rounded up).
    doubled = resolve_epochs(cfg, 584).train
    assert (doubled.steps, doubled.warmup_steps, doubled.lr_steps, doubled.eval_every) == (
        2 * 1752,
        146,
        [2336, 3212],
        584,
    )
    big_batch = resolve_epochs(
        _cfg("train.batch_size=8", "train.epochs=12", "train.lr_epochs=[8]", "train.schedule=step"),
        292,
    ).train
    assert big_batch.steps == 438 and big_batch.lr_steps == [292]
    assert cfg.train.steps == 2000  # the input config is not modified


def test_fractional_epochs_round_up_to_whole_steps():
    assert epoch_steps(41, 205, 2) == 4203  # 41 * 102.5
    assert epoch_steps(2.5, 292, 2) == 365  # exactly 365, not 366 from float noise
    assert epoch_steps(0.001, 10, 4) == 1
    with pytest.raises(ValueError, match="train.epochs must be > 0"):
        epoch_steps(0, 10, 2)


def test_step_fields_stay_when_nothing_is_in_epochs_and_errors_name_the_key():
    cfg = _cfg("train.steps=300", "train.warmup_steps=7")
    assert resolve_epochs(cfg, None) is cfg
    with pytest.raises(ValueError, match="endless stream: use train.steps"):
        resolve_epochs(_cfg("train.epochs=3"), None)
    with pytest.raises(ValueError, match=r"train.lr_epochs \[3.0\] lie at or past the end"):
        resolve_epochs(_cfg("train.epochs=3", "train.lr_epochs=[3]"), 100)
    with pytest.raises(ConfigError, match="endless stream"):  # shapes: no split size
        resolve_schedule(_cfg("train.epochs=3"))
    # the config's own range check names the key and the value (before anything is written)
    with pytest.raises(ConfigError, match=r"train.epochs must be > 0 or null, got -1.0"):
        _cfg("train.epochs=-1")
