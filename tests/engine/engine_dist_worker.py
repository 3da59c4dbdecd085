"""Subprocess body of the distribution tests: train a few steps, save losses and weights.

Usage: python engine_dist_worker.py MODE OUT_NPZ [MODEL] [OUT_NPZ MODEL ...]
  MODE: ``single`` (one device, global batch 2), ``mirrored`` (2 logical CPUs, 1 image each)
        or ``multi_worker`` (TF_CONFIG set by the caller; 1 image per worker).
  MODEL: ``standin`` (default) or ``rfcn`` (the real small detector, deterministic settings),
        optionally with per-run settings ``rfcn,steps=4`` or ``standin,clip=1e9``.
  Several OUT_NPZ MODEL pairs (MODE single only) train one after the other in this process
  (each from the same seeded initial weights, with its own strategy, model and optimizer):
  that saves a process start (TensorFlow import) per configuration where separate processes
  are not the point.

Environment (the resume test): ``STEPS`` (default 3; ``steps=`` overrides it per run),
``CKPT_DIR`` (a fixed checkpoint folder, shared by the workers; default a fresh one per process
and run), ``CKPT_EVERY`` (default 0: only at the end), ``KILL_AT`` (this process kills itself
with SIGKILL right after that step; the losses so far are written to ``OUT_NPZ.losses.json``
after every step, so that a killed run's steps can be checked too), ``CLIP`` (the clip norm,
default 0.5; ``clip=`` overrides it), ``VALIDATE`` (1: the chief validates every step with a
stand-in metric, keeping the best checkpoint in ``<OUT folder>/run_chief``, as training does
on the chief only).

Logical devices must be configured before TensorFlow initializes, hence a fresh process.
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

GLOBAL_BATCH = 2


def main(mode: str, *jobs: str) -> None:
    """Configures the devices once, then trains every (OUT_NPZ, MODEL) pair of ``jobs``."""
    if len(jobs) == 1:
        jobs = (jobs[0], "standin")
    # Strategies with replicas cannot follow each other in one process: their collectives'
    # instance keys collide ("Shape mismatch in the collective instance").
    assert len(jobs) % 2 == 0 and (len(jobs) == 2 or mode == "single"), jobs
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for out, spec in zip(jobs[::2], jobs[1::2]):
        model_kind, *settings = spec.split(",")
        options = dict(item.split("=") for item in settings)
        train(
            mode,
            out,
            model_kind,
            steps=int(options.get("steps", os.environ.get("STEPS", "3"))),
            clip=float(options.get("clip", os.environ.get("CLIP", "0.5"))),
        )


def train(mode: str, out: str, model_kind: str, *, steps: int, clip: float) -> None:
    """``steps`` steps of global batch 2 from seed-0 weights; losses and weights to ``out``."""
    from rfcn_tf.engine import optimizer as opt
    from rfcn_tf.engine import schemes
    from rfcn_tf.engine.loop import Hook
    from rfcn_tf.engine.strategy import build_strategy, is_chief

    if mode == "single":
        strategy = build_strategy("default")
    elif mode == "mirrored":
        strategy = build_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    else:
        strategy = build_strategy("multi_worker")
    assert strategy.num_replicas_in_sync == (1 if mode == "single" else 2), strategy

    import keras

    keras.utils.set_random_seed(0)  # the same initial weights in every configuration
    if model_kind == "standin":
        from helpers.engine_standin import TinyDetector, dataset_fn

        with strategy.scope():
            model = TinyDetector(num_classes=2)
        data_fn = dataset_fn(GLOBAL_BATCH)
        num_classes = 2
    else:
        from helpers.engine_real_model import build_real_model, real_dataset_fn

        with strategy.scope():
            model, num_classes = build_real_model()
        data_fn = real_dataset_fn(GLOBAL_BATCH)

    def optimizer_fn(variables, steps):
        schedule = opt.build_lr_schedule(
            base_lr=0.05, total_steps=steps, warmup_steps=1, warmup_factor=0.5, schedule="cosine"
        )
        # A small clip threshold so that clipping is active: it must use the all-replica norm.
        return opt.build_optimizer(
            variables=variables,
            learning_rate=schedule,
            momentum=0.9,
            weight_decay=0.01,
            clip_norm=clip,
        )

    logs = []
    kill_at = int(os.environ.get("KILL_AT", "0"))

    class Record(Hook):
        def after_step(self, loop, step, step_logs):
            logs.append(float(step_logs["total_loss"]))
            with open(out + ".losses.json", "w") as f:
                json.dump(logs, f)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no cleanup, no final save

    workdir = os.environ.get("CKPT_DIR") or os.path.join(
        os.path.dirname(out), f"ckpt_{mode}_{os.getpid()}_{os.path.basename(out)}"
    )
    hooks = [Record()]
    if os.environ.get("VALIDATE") == "1" and is_chief(strategy):
        from rfcn_tf.engine.best_checkpoint import BestCheckpoint
        from rfcn_tf.engine.validation import ValidationHook

        def evaluate(step):  # a stand-in metric: best at step 2
            value = {1: 0.1, 2: 0.5}.get(step, 0.2)
            return {"coco": {"AP": value, "AP50": value}, "voc2010": {"mAP": value}}

        best = BestCheckpoint(
            os.path.join(os.path.dirname(out), "run_chief"), model=model, num_classes=num_classes
        )
        hooks.append(ValidationHook(evaluate, every=1, best=best))
    schemes.run_training(
        model=model,
        strategy=strategy,
        dataset_fn=data_fn,
        stages=schemes.build_stages("joint", steps=steps),
        optimizer_fn=optimizer_fn,
        checkpoint_dir=workdir,
        num_classes=num_classes,
        global_batch_size=GLOBAL_BATCH,
        checkpoint_every=int(os.environ.get("CKPT_EVERY", "0")),
        hooks_fn=lambda stage, total: hooks,
    )
    weights = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(model.trainable_weights)}
    np.savez(out, losses=np.array(logs), **weights)


if __name__ == "__main__":
    main(*sys.argv[1:])
