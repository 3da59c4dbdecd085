"""R-FCN training step time on this machine.

Prints markdown tables:
  1. the full training step (forward, losses, backward, SGD update: the engine's
     ``build_train_step``) for ResNet-50 (random weights) at 600x1000, batch 1, with OHEM
     (R-FCN sec. 2: 128 of 300 RoIs) and with balanced 1:3 sampling; the OHEM cost ratio
     (target: OHEM within 5% of balanced sampling);
  2. the default config (``configs/shapes_tiny.yaml``): step time and images/s with its global
     batch, fed by its real input pipeline (synthetic shapes).

Every step is the engine's tf.function, warmed up first; medians of ``--steps`` timed steps.
Timings taken while other processes load the CPU are noisy: compare numbers within one run.

    python benchmarks/train_step.py [--steps 10 --height 600 --width 1000 --skip-resnet]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np
import tensorflow as tf

from rfcn_tf.config import load_config
from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.train_step import build_train_step
from rfcn_tf.model.builder import build_detector


def synthetic_batch(
    *, height: int, width: int, batch: int, num_classes: int, boxes: int = 5, seed: int = 0
) -> dict:
    """A batch in the INTERFACES.md feature layout: random pixels and ``boxes`` gt boxes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(batch, height, width, 3), dtype=np.uint8)
    y1 = rng.uniform(0, height * 0.6, size=(batch, boxes))
    x1 = rng.uniform(0, width * 0.6, size=(batch, boxes))
    h = rng.uniform(40, height * 0.4, size=(batch, boxes))
    w = rng.uniform(40, width * 0.4, size=(batch, boxes))
    gt_boxes = np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32)
    return {
        "images": images,
        "image_shapes": np.tile(np.array([[height, width]], np.int32), [batch, 1]),
        "gt_boxes": gt_boxes,
        "gt_classes": rng.integers(1, num_classes + 1, size=(batch, boxes)).astype(np.int32),
        "gt_mask": np.ones((batch, boxes), bool),
    }


def time_steps(
    model,
    dataset,
    *,
    steps: int,
    warmup: int = 2,
    weight_decay: float = 1e-4,
    clip_norm: float | None = 10.0,
) -> list[float]:
    """Seconds of each of ``steps`` train steps (after ``warmup`` untimed ones): the engine's
    train step with SGD (lr 1e-4, momentum 0.9, ``weight_decay``, global-norm ``clip_norm``) fed
    by ``dataset`` (batches of ``synthetic_batch``'s or the pipeline's format).

    Also used by benchmarks/input_pipeline.py for its training rates."""
    strategy = tf.distribute.get_strategy()
    variables = model.trainable_variables
    optimizer = build_optimizer(
        variables=variables,
        learning_rate=1e-4,
        momentum=0.9,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )
    step = build_train_step(model, optimizer, strategy, variables=variables)
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: dataset))
    for _ in range(warmup):
        float(step(iterator)["total_loss"])
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        float(step(iterator)["total_loss"])
        times.append(time.perf_counter() - started)
    return times


def resnet_table(args) -> None:
    cfg = load_config(
        "voc07_resnet101",
        [
            "model.backbone.name=resnet50",
            "model.backbone.weights=null",
            f"data.scales=[{args.height}]",
            f"data.max_size={args.width}",
        ],
    )
    batch = synthetic_batch(height=args.height, width=args.width, batch=1, num_classes=20)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    rows = {}
    for sampling in ("balanced", "ohem"):
        model_cfg = dataclasses.replace(
            cfg.model, roi=dataclasses.replace(cfg.model.roi, sampling=sampling)
        )
        keras.utils.set_random_seed(0)
        model = build_detector(model_cfg, num_classes=20)
        rows[sampling] = time_steps(model, dataset, steps=args.steps)
        del model
    print(
        f"\n### Training step, ResNet-50 (random weights), {args.height}x{args.width}, batch 1, "
        f"{cfg.model.rpn.post_nms_top_n_train} RoIs, B = {cfg.model.roi.batch_size_per_image}, "
        f"psroi_impl={cfg.model.head.psroi_impl}\n"
    )
    print("| RoI selection | median step (s) | min (s) | images/s |")
    print("|---|---|---|---|")
    for sampling, times in rows.items():
        med = statistics.median(times)
        print(f"| {sampling} | {med:.3f} | {min(times):.3f} | {1 / med:.2f} |")
    ratio = statistics.median(rows["ohem"]) / statistics.median(rows["balanced"])
    print(f"\nOHEM / balanced step time: {ratio:.3f} (target <= 1.05)")


def default_config_table(args) -> None:
    from rfcn_tf.data.pipeline import build_dataset, build_source

    cfg = load_config(None)
    _, info = build_source(cfg.data, split=cfg.data.train_split)
    model = build_detector(cfg.model, num_classes=len(info.class_names))
    dataset = build_dataset(
        cfg.data, split=cfg.data.train_split, training=True, batch_size=cfg.train.batch_size
    ).repeat()
    times = time_steps(model, dataset, steps=args.steps * 3, warmup=3)
    med = statistics.median(times)
    print(
        f"\n### Default config (shapes_tiny): {cfg.model.backbone.name} backbone "
        f"{cfg.model.backbone.small_widths}, {cfg.data.scales[0]} px, global batch "
        f"{cfg.train.batch_size}, {cfg.model.roi.sampling}\n"
    )
    print("| median step (s) | min (s) | images/s (median) |")
    print("|---|---|---|")
    print(f"| {med:.3f} | {min(times):.3f} | {cfg.train.batch_size / med:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--skip-resnet", action="store_true", help="only the default config")
    parser.add_argument("--skip-default", action="store_true", help="only ResNet-50")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; medians of {args.steps} steps")
    if not args.skip_resnet:
        resnet_table(args)
    if not args.skip_default:
        default_config_table(args)


if __name__ == "__main__":
    main()
