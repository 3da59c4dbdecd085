"""Tests for rfcn_tf.engine.loop: step numbering, hook calls, the NaN guard."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn

from rfcn_tf.engine.callbacks import CheckpointHook
from rfcn_tf.engine.loop import Hook, NonFiniteLossError, TrainLoop
from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.train_step import build_train_step


class Recorder(Hook):
    def __init__(self):
        self.events = []

    def on_train_begin(self, loop):
        self.events.append(("begin", loop.start_step))

    def after_step(self, loop, step, logs):
        self.events.append(("step", step, dict(logs)))

    def on_train_end(self, loop, logs):
        self.events.append(("end", loop.step))

    def on_train_failed(self, loop, error):
        self.events.append(("failed", type(error).__name__))


def _setup(model, lr=0.05):
    strategy = tf.distribute.get_strategy()
    variables = model.trainable_variables
    optimizer = build_optimizer(variables=variables, learning_rate=lr)
    step_fn = build_train_step(model, optimizer, strategy, variables=variables)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn(2)))
    counter = tf.Variable(0, dtype=tf.int64)
    return optimizer, step_fn, iterator, counter


def test_steps_are_numbered_from_one_and_hooks_see_every_step():
    model = TinyDetector()
    optimizer, step_fn, iterator, counter = _setup(model)
    counter.assign(3)  # as if resumed after 3 steps
    recorder = Recorder()
    loop = TrainLoop(
        step_fn=step_fn,
        iterator=iterator,
        step_counter=counter,
        end_step=7,
        global_batch_size=2,
        learning_rate_fn=lambda: 0.05,
        hooks=[recorder],
        name="joint",
    )
    logs = loop.run()
    assert recorder.events[0] == ("begin", 3)
    steps = [e[1] for e in recorder.events if e[0] == "step"]
    assert steps == [4, 5, 6, 7]
    assert recorder.events[-1] == ("end", 7)
    assert int(counter.numpy()) == 7 and loop.step == 7
    assert int(optimizer.iterations.numpy()) == 4
    for key in (
        "total_loss",
        "rpn_objectness_loss",
        "learning_rate",
        "images_per_sec",
        "step_time",
        "global_batch_size",
    ):
        assert key in logs, key
    assert logs["learning_rate"] == 0.05 and logs["images_per_sec"] > 0


def test_loop_with_nothing_left_runs_no_step():
    model = TinyDetector()
    _, step_fn, iterator, counter = _setup(model)
    counter.assign(5)
    recorder = Recorder()
    assert (
        TrainLoop(
            step_fn=step_fn,
            iterator=iterator,
            step_counter=counter,
            end_step=5,
            global_batch_size=2,
            hooks=[recorder],
        ).run()
        == {}
    )
    assert [e[0] for e in recorder.events] == ["begin", "end"]


def test_nan_loss_stops_with_step_and_losses_and_keeps_last_checkpoint(tmp_path):
    model = TinyDetector(nan_at_call=5)  # the 5th step's loss is NaN
    optimizer, step_fn, iterator, counter = _setup(model)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=counter)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=5)
    recorder = Recorder()
    loop = TrainLoop(
        step_fn=step_fn,
        iterator=iterator,
        step_counter=counter,
        end_step=10,
        global_batch_size=2,
        hooks=[CheckpointHook(manager, every=2), recorder],
        name="joint",
        checkpoint_dir=str(tmp_path),
    )
    with pytest.raises(NonFiniteLossError) as info:
        loop.run()
    error = info.value
    message = str(error)
    assert error.step == 5
    assert "non-finite loss at step 5 (joint)" in message
    assert "total_loss=nan" in message and "rpn_objectness_loss=" in message
    assert "ckpt-4" in message  # names the last good checkpoint
    assert np.isnan(error.losses["total_loss"]) and np.isfinite(error.losses["rpn_objectness_loss"])
    assert isinstance(error, FloatingPointError)
    # Step 5 never reached the hooks; the counter stayed at the last good step.
    assert [e[1] for e in recorder.events if e[0] == "step"] == [1, 2, 3, 4]
    assert recorder.events[-1] == ("failed", "NonFiniteLossError")
    assert int(counter.numpy()) == 4
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
    restored = TinyDetector()
    tf.train.Checkpoint(model=restored).restore(str(tmp_path / "ckpt-4")).expect_partial()
    assert all(np.all(np.isfinite(v.numpy())) for v in restored.weights)


def test_rejects_bad_batch_size():
    model = TinyDetector()
    _, step_fn, iterator, counter = _setup(model)
    with pytest.raises(ValueError, match="global_batch_size must be >= 1, got 0"):
        TrainLoop(
            step_fn=step_fn,
            iterator=iterator,
            step_counter=counter,
            end_step=1,
            global_batch_size=0,
        )
