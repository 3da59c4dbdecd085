"""Input pipeline throughput against what training consumes.

Prints a markdown table: images/s delivered by `build_dataset(..., training=True)` alone (the
training transforms, the batch size of the config, the pipeline's own prefetch and parallel
maps) for the default config (shapes_tiny, 256 px), shapes drawn at 600 px, and BCCD as
configured (configs/bccd.yaml: 384 px, photometric jitter, cached decode) and at 600 px without
cache. When `rfcn_tf.model` is importable it also times the training step of the shapes_tiny and
bccd configs (the engine's train step fed by constant batches, so only the model is timed) and
prints the ratio pipeline / training images per second (target: >= 5).

Timings taken while other processes load the CPU are noisy: compare numbers within one run.
The numbers are medians over --repeats timed windows of --batches batches each.

    python benchmarks/input_pipeline.py [--batches 30 --repeats 3 --skip-train]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf

from rfcn_tf.config import load_config
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_dataset, build_source


def pipeline_rate(
    data_cfg, *, split: str, batch_size: int, batches: int, repeats: int, warmup: int = 5
) -> tuple[float, tuple[int, int]]:
    """Median images/s of the training pipeline, and the padded image size of its batches."""
    dataset = build_dataset(data_cfg, split=split, training=True, batch_size=batch_size)
    iterator = iter(dataset)
    for _ in range(warmup):
        features = next(iterator)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            features = next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - started))
    return statistics.median(rates), tuple(features["images"].shape[1:3])


def train_rate(config, *, steps: int, warmup: int = 3) -> float:
    """Median images/s of the config's training step on a constant batch of its own pipeline."""
    from train_step import time_steps  # benchmarks/train_step.py (this script's folder)

    from rfcn_tf.model.builder import build_detector

    data_cfg = config.data
    _, info = build_source(data_cfg, split=data_cfg.train_split)
    batch = next(
        iter(
            build_dataset(
                data_cfg,
                split=data_cfg.train_split,
                training=True,
                batch_size=config.train.batch_size,
            )
        )
    )
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    model = build_detector(config.model, num_classes=info.num_classes)
    times = time_steps(
        model,
        dataset,
        steps=steps,
        warmup=warmup,
        weight_decay=config.train.weight_decay,
        clip_norm=config.train.clip_norm,
    )
    return config.train.batch_size / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median taken)")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    parser.add_argument(
        "--skip-train", action="store_true", help="only the pipeline rates (no model)"
    )
    args = parser.parse_args()

    shapes = load_config("shapes_tiny")
    shapes_600 = load_config(
        "shapes_tiny", ["data.shapes.image_size=600", "data.scales=[600]", "data.max_size=1000"]
    )
    bccd = load_config("bccd")
    bccd_600 = load_config("bccd", ["data.scales=[600]", "data.max_size=1000", "data.cache=false"])
    rows = [
        ("shapes_tiny (default)", shapes),
        ("shapes at 600 px", shapes_600),
        ("BCCD (bccd.yaml)", bccd),
        ("BCCD at 600 px, no cache", bccd_600),
    ]

    train = {}
    if not args.skip_train:
        train["shapes_tiny"] = train_rate(shapes, steps=args.train_steps)
        train["bccd"] = train_rate(bccd, steps=args.train_steps)

    default_rate = train.get("shapes_tiny")
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; medians of {args.repeats} "
        f"windows of {args.batches} batches\n"
    )
    print(
        "| pipeline (training transforms) | batch | padded image | images/s "
        "| / default training images/s (target >= 5) |"
    )
    print("|---|---|---|---|---|")
    rates = {}
    for name, config in rows:
        try:
            rate, padded = pipeline_rate(
                config.data,
                split=config.data.train_split,
                batch_size=config.train.batch_size,
                batches=args.batches,
                repeats=args.repeats,
            )
        except DataError as exc:  # e.g. no BCCD folder on this machine
            print(f"| {name} | - | - | unavailable: {exc} | - |")
            continue
        rates[name] = rate
        ratio = f"{rate / default_rate:.1f}" if default_rate else "-"
        print(
            f"| {name} | {config.train.batch_size} | {padded[0]}x{padded[1]} | {rate:.1f} | "
            f"{ratio} |"
        )
    if train:
        print()
        print("| training step (small backbone) | images/s |")
        print("|---|---|")
        for key, rate in train.items():
            print(f"| {key} | {rate:.2f} |")
        if "bccd" in train and "BCCD (bccd.yaml)" in rates:
            print(
                f"\nBCCD pipeline / BCCD training: {rates['BCCD (bccd.yaml)'] / train['bccd']:.1f}"
            )
    else:
        print("\n(training not timed: compare the images/s column with the training rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
