"""Subprocess body of test_engine_replicas.py: sync BatchNorm and epoch schedules on 1 or 2 replicas.

Usage: python engine_replicas_worker.py MODE OUT_NPZ VOC_ROOT
  MODE: ``single`` (default strategy) or ``mirrored`` (2 logical CPU devices).

Writes to OUT_NPZ:
  ``bn_sync/<i>``, ``bn_local/<i>``: the stand-in detector's weights (BatchNorm moving statistics
  included) after 3 steps of global batch 4 with the BatchNorm layers synchronized or not (on
  one device both are the same computation);
  ``epoch_steps``: the steps derived for train.epochs=2 on the VOC folder's train split with
  global batch 2; ``epoch_ids``: the image ids those steps read, over all replicas.

Logical devices must be configured before TensorFlow initializes, hence a fresh process.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf


def _train_bn(strategy, synchronized: bool) -> list[np.ndarray]:
    import keras
    from helpers.engine_standin import TinyDetector, dataset_fn

    from rfcn_tf.engine import schemes
    from rfcn_tf.engine.optimizer import build_lr_schedule, build_optimizer
    from rfcn_tf.engine.sync_batchnorm import synchronize_batchnorm

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = TinyDetector(num_classes=2, batch_norm=True)
    if synchronized:
        count = synchronize_batchnorm(
            model,
            num_replicas=strategy.num_replicas_in_sync,
            per_replica_batch=4 // strategy.num_replicas_in_sync,
        )
        assert count == (1 if strategy.num_replicas_in_sync > 1 else 0), count
    workdir = os.path.join(os.path.dirname(OUT), f"bn_{synchronized}_{os.getpid()}")
    schemes.run_training(
        model=model,
        strategy=strategy,
        dataset_fn=dataset_fn(4),
        stages=schemes.build_stages("joint", steps=3),
        optimizer_fn=lambda variables, steps: build_optimizer(
            variables=variables,
            momentum=0.9,
            learning_rate=build_lr_schedule(
                base_lr=0.1, total_steps=steps, schedule="cosine", warmup_steps=0
            ),
        ),
        checkpoint_dir=workdir,
        num_classes=2,
        global_batch_size=4,
        checkpoint_every=0,
    )
    return [np.array(v.numpy()) for v in model.weights if "calls" not in v.path]


def _epochs(strategy, voc_root: str):
    from rfcn_tf.config import load_config
    from rfcn_tf.data.pipeline import build_dataset
    from rfcn_tf.engine.features import resolve_schedule

    cfg = load_config(
        "shapes_tiny",
        [
            "data.source=voc",
            f"data.voc_root={voc_root}",
            "data.train_split=train",
            "data.scales=[32]",
            "data.max_size=64",
            "data.deterministic=true",
            "data.drop_empty=false",
            "train.batch_size=2",
            "train.epochs=2",
            "train.warmup_epochs=0.5",
            "train.schedule=step",
            "train.lr_epochs=[1.5]",
        ],
    )
    cfg = resolve_schedule(cfg)

    def fn(context):
        return build_dataset(
            cfg.data, split="train", training=True, batch_size=2, input_context=context
        )

    iterator = iter(strategy.distribute_datasets_from_function(fn))
    ids = []
    for _ in range(cfg.train.steps):
        batch = next(iterator)
        for part in strategy.experimental_local_results(batch["image_ids"]):
            ids.extend(int(i) for i in part.numpy())
    return {
        "epoch_steps": np.array(
            [cfg.train.steps, cfg.train.warmup_steps] + list(cfg.train.lr_steps)
        ),
        "epoch_ids": np.array(ids),
    }


def main(mode: str, voc_root: str) -> None:
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    from rfcn_tf.engine.strategy import build_strategy

    strategy = (
        build_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
        if mode == "mirrored"
        else build_strategy("default")
    )
    out = {}
    for synchronized in (True, False):
        for i, value in enumerate(_train_bn(strategy, synchronized)):
            out[f"bn_{'sync' if synchronized else 'local'}/{i}"] = value
    out.update(_epochs(strategy, voc_root))
    np.savez(OUT, **out)


if __name__ == "__main__":
    OUT = sys.argv[2]
    main(sys.argv[1], sys.argv[3])
