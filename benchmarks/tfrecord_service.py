"""TFRecord input vs the VOC folder, and tf.data service vs the local pipeline (images/s).

1. BCCD trainval converted to 4 OD API TFRecord shards (`rfcn_tf.data.convert`) against the
   VOC-folder source it came from: the training pipeline of configs/bccd.yaml without its
   cache (so every image is read and decoded), batch 2, and the examples' statistics (the
   `inspect` table) compared for equality.
2. The same TFRecord pipeline run locally, through a tf.data service with 1 worker and with 2
   workers (dispatcher and workers in this process, on loopback). On a machine with few cores
   the workers share them with each other and with the consumer, so 2 workers cannot be much
   faster than 1 here; the ratio is printed as measured.

3. With `--loss-steps N`: the first N training steps' total loss of a tiny shapes model
   (`python -m rfcn_tf.train`, same seed) fed by the local pipeline and by the service (2
   workers): the same recipe, so the curves should agree within the step-to-step noise.

All variants of one table are timed in interleaved windows in one process (medians), so load
from other processes affects them alike; every window starts a fresh iterator, so no variant
is timed on batches it buffered while another was timed.

    python benchmarks/tfrecord_service.py [--batches 20 --repeats 4] [--loss-steps 20] [--no-service]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf

from rfcn_tf.config import load_config
from rfcn_tf.data import service
from rfcn_tf.data.convert import convert_split
from rfcn_tf.data.inspection import collect_statistics
from rfcn_tf.data.pipeline import build_dataset, build_source


def interleaved(variants: dict, *, batches: int, repeats: int, warmup: int = 3) -> dict:
    """{name: median images/s}, timing one window of each variant in turn.

    Each window starts a fresh iterator (and discards `warmup` batches), so a variant never
    profits from batches its prefetch buffers filled while the others were timed.
    """
    rates = {name: [] for name in variants}
    for _ in range(repeats):
        for name, dataset in variants.items():
            iterator = iter(dataset)
            for _ in range(warmup):
                next(iterator)
            started = time.perf_counter()
            images = 0
            for _ in range(batches):
                images += int(next(iterator)["images"].shape[0])
            rates[name].append(images / (time.perf_counter() - started))
            del iterator
    return {name: statistics.median(r) for name, r in rates.items()}


TINY = [
    "data.shapes.image_size=64",
    "data.scales=[64]",
    "data.max_size=64",
    "data.shapes.num_val=4",
    "data.max_boxes=6",
    "model.backbone.small_widths=[8,16,16,32]",
    "model.anchors.scales=[16.0,32.0]",
    "model.rpn.channels=16",
    "model.head.channels=32",
    "model.rpn.pre_nms_top_n_train=64",
    "model.rpn.post_nms_top_n_train=16",
    "model.roi.batch_size_per_image=16",
    "model.rpn.batch_size_per_image=32",
    "train.batch_size=2",
    "train.log_every=1",
    "train.warmup_steps=5",
    "train.num_summary_images=0",
]


def loss_curve(steps: int, work_dir: str, *overrides: str) -> list[float]:
    """total_loss of each of the first `steps` steps of a tiny shapes training run."""
    import re
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [
        sys.executable,
        "-m",
        "rfcn_tf.train",
        "--work-dir",
        work_dir,
        "--no-progress",
        "--no-eval",
        "--no-export",
        "--set",
        f"train.steps={steps}",
    ]
    for override in TINY + list(overrides):
        args += ["--set", override]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return [float(v) for v in re.findall(r"total_loss=([0-9.]+)", result.stderr)][:steps]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=4, help="windows per variant (median)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--loss-steps",
        type=int,
        default=0,
        help="also compare this many training steps' losses, local vs service",
    )
    parser.add_argument(
        "--no-service",
        action="store_true",
        help="only the TFRecord vs VOC-folder table (skip the tf.data service tables)",
    )
    args = parser.parse_args()

    voc = load_config("bccd", ["data.cache=false"]).data
    split = voc.train_split
    tmp = tempfile.TemporaryDirectory(prefix="tfrecord_bench_")
    started = time.perf_counter()
    summary = convert_split(voc, split=split, out_dir=tmp.name, num_shards=4, progress=False)
    convert_s = time.perf_counter() - started
    tfr = dataclasses.replace(
        voc, source="tfrecord", tfrecord_pattern=os.path.join(tmp.name, "{split}-*.tfrecord")
    )

    voc_ds, voc_info = build_source(voc, split=split)
    tfr_ds, tfr_info = build_source(tfr, split=split)
    same = collect_statistics(voc_ds, voc_info.class_names, progress=False) == collect_statistics(
        tfr_ds, tfr_info.class_names, progress=False
    )

    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; BCCD {split}: "
        f"{summary['num_examples']} images converted to 4 shards in {convert_s:.1f} s; "
        f"inspect statistics identical: {same}; batch {args.batch_size}; medians of "
        f"{args.repeats} interleaved windows of {args.batches} batches\n"
    )
    rates = interleaved(
        {
            "voc": build_dataset(voc, split=split, training=True, batch_size=args.batch_size),
            "tfrecord": build_dataset(tfr, split=split, training=True, batch_size=args.batch_size),
        },
        batches=args.batches,
        repeats=args.repeats,
    )
    print("| BCCD training pipeline (bccd.yaml, no cache) | images/s |")
    print("|---|---:|")
    print(f"| VOC folder | {rates['voc']:.1f} |")
    print(f"| TFRecord, 4 shards | {rates['tfrecord']:.1f} |")
    print(f"| ratio TFRecord / VOC | {rates['tfrecord'] / rates['voc']:.2f} |\n", flush=True)
    if args.no_service:
        tmp.cleanup()
        return 0

    servers = []
    variants = {"local": build_dataset(tfr, split=split, training=True, batch_size=args.batch_size)}
    for workers in (1, 2):
        dispatcher = service.start_dispatcher(port=0)
        servers.append(dispatcher)
        for _ in range(workers):
            servers.append(
                service.start_worker(dispatcher_address=dispatcher.target, host="localhost")
            )
        cfg = dataclasses.replace(tfr, service=dispatcher.target)
        variants[f"service, {workers} worker{'s' if workers > 1 else ''}"] = build_dataset(
            cfg, split=split, training=True, batch_size=args.batch_size
        )
    rates = interleaved(variants, batches=args.batches, repeats=args.repeats)
    print("| TFRecord pipeline | images/s |")
    print("|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print(
        f"| ratio 2 workers / 1 worker | "
        f"{rates['service, 2 workers'] / rates['service, 1 worker']:.2f} |"
    )
    print(f"| ratio 1 worker / local | {rates['service, 1 worker'] / rates['local']:.2f} |")
    if args.loss_steps:
        dispatcher = service.start_dispatcher(port=0)
        workers = [
            service.start_worker(dispatcher_address=dispatcher.target, host="localhost")
            for _ in range(2)
        ]
        local = loss_curve(args.loss_steps, os.path.join(tmp.name, "run_local"))
        served = loss_curve(
            args.loss_steps,
            os.path.join(tmp.name, "run_service"),
            f"data.service={dispatcher.target}",
        )
        noise = statistics.median(abs(a - b) for a, b in zip(local[1:], local[:-1]))
        diff = statistics.mean(abs(a - b) for a, b in zip(local, served))
        print(f"\n| first {args.loss_steps} steps, tiny shapes model | total_loss |")
        print("|---|---|")
        print(f"| local pipeline | {' '.join(f'{v:.3f}' for v in local)} |")
        print(f"| tf.data service, 2 workers | {' '.join(f'{v:.3f}' for v in served)} |")
        print(f"| mean abs(local - service) per step | {diff:.3f} |")
        print(f"| median abs step-to-step change (local) | {noise:.3f} |")
        del workers, dispatcher
    del servers
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
