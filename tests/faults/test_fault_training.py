"""Training faults through the engine's public `run_training` with the stand-in model: a NaN
loss stops naming the step and keeps the last good checkpoint; kill -9 (a real SIGKILL of a
training process, possibly in the middle of a save) resumes from the newest intact checkpoint
and continues to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn

from rfcn_tf.engine import checkpoints as ckpt_lib
from rfcn_tf.engine.loop import NonFiniteLossError
from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.schemes import build_stages, run_training

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(model, directory, steps):
    return run_training(
        model=model,
        strategy=tf.distribute.get_strategy(),
        dataset_fn=dataset_fn(2),
        stages=build_stages("joint", steps=steps),
        optimizer_fn=lambda variables, n: build_optimizer(variables=variables, learning_rate=0.05),
        checkpoint_dir=str(directory),
        num_classes=2,
        global_batch_size=2,
        checkpoint_every=1,
        keep_checkpoints=3,
    )


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    directory = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteLossError) as err:
        _train(TinyDetector(nan_at_call=3), directory, 6)
    message = str(err.value)
    assert err.value.step == 3 and "non-finite loss at step 3" in message
    assert "total_loss=nan" in message
    assert f"The last good checkpoint is {directory / 'ckpt-2'} (not overwritten)" in message
    restored = TinyDetector(seed=4)
    assert ckpt_lib.restore_model_weights(restored, str(directory), num_classes=2).step == 2
    assert all(np.all(np.isfinite(v.numpy())) for v in restored.weights)


_ENDLESS_TRAINING = """
import sys, time
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn
from rfcn_tf.engine.loop import Hook
from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.schemes import build_stages, run_training

class Slow(Hook):
    def after_step(self, loop, step, logs):
        time.sleep(0.02)

run_training(model=TinyDetector(), strategy=tf.distribute.get_strategy(),
             dataset_fn=dataset_fn(2), stages=build_stages("joint", steps=100000),
             optimizer_fn=lambda v, n: build_optimizer(variables=v, learning_rate=0.05),
             checkpoint_dir=sys.argv[1], num_classes=2, global_batch_size=2,
             checkpoint_every=1, keep_checkpoints=3, hooks_fn=lambda s, t: [Slow()])
"""


def test_kill_9_resumes_from_the_newest_intact_checkpoint(tmp_path):
    directory = tmp_path / "checkpoints"
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(
            [
                os.path.join(TESTS, "engine"),
                os.path.dirname(TESTS),
                os.environ.get("PYTHONPATH", ""),
            ]
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENDLESS_TRAINING, str(directory)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            latest = tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None
            if latest and int(latest.rsplit("-", 1)[1]) >= 5:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # anywhere, possibly inside a save
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(tf.train.latest_checkpoint(str(directory)).rsplit("-", 1)[1])
    model = TinyDetector(seed=3)
    result = _train(model, directory, killed_at + 3)
    assert result.resumed_from is not None
    assert result.resumed_from == str(directory / f"ckpt-{killed_at}")
    assert result.step == killed_at + 3
    assert not [p for p in os.listdir(directory) if p.endswith("_temp")]
    restored = TinyDetector(seed=5)
    assert (
        ckpt_lib.restore_model_weights(restored, str(directory), num_classes=2).step
        == killed_at + 3
    )
    np.testing.assert_array_equal(restored.rpn_head.kernel.numpy(), model.rpn_head.kernel.numpy())
