"""TFRecord input vs the VOC folder, and tf.data service vs the local pipeline (images/s).

1. BCCD trainval converted to 4 OD API TFRecord shards (`rfcn_tf.data.convert`) against the
   VOC-folder source it came from: the training pipeline of configs/bccd.yaml without its
   cache (so every image is read and decoded), batch 2, and the examples' statistics (the
   `inspect` table) compared for equality.
2. The same TFRecord pipeline run locally, through a tf.data service with 1 worker and with 2
   workers (dispatcher and workers in this process, on loopback). On a machine with few cores
   the workers share them with each other and with the consumer, so 2 workers cannot be much
   faster than 1 here; the ratio is printed as measured.

All variants of one table are timed in interleaved windows in one process (medians), so load
from other processes affects them alike; every window starts a fresh iterator, so no variant
is timed on batches it buffered while another was timed.

    python benchmarks/tfrecord_service.py [--batches 20 --repeats 4]
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
from rfcn_tf.data.inspect import collect_statistics
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=4, help="windows per variant (median)")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()

    voc = load_config("bccd", ["data.cache=false"]).data
    split = voc.train_split
    tmp = tempfile.TemporaryDirectory(prefix="tfrecord_bench_")
    started = time.perf_counter()
    summary = convert_split(voc, split=split, out_dir=tmp.name, num_shards=4, progress=False)
    convert_s = time.perf_counter() - started
    tfr = dataclasses.replace(voc, source="tfrecord",
                              tfrecord_pattern=os.path.join(tmp.name, "{split}-*.tfrecord"))

    voc_ds, voc_info = build_source(voc, split=split)
    tfr_ds, tfr_info = build_source(tfr, split=split)
    same = (collect_statistics(voc_ds, voc_info.class_names, progress=False)
            == collect_statistics(tfr_ds, tfr_info.class_names, progress=False))

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; BCCD {split}: "
          f"{summary['num_examples']} images converted to 4 shards in {convert_s:.1f} s; "
          f"inspect statistics identical: {same}; batch {args.batch_size}; medians of "
          f"{args.repeats} interleaved windows of {args.batches} batches\n")
    rates = interleaved({
        "voc": build_dataset(voc, split=split, training=True, batch_size=args.batch_size),
        "tfrecord": build_dataset(tfr, split=split, training=True, batch_size=args.batch_size),
    }, batches=args.batches, repeats=args.repeats)
    print("| BCCD training pipeline (bccd.yaml, no cache) | images/s |")
    print("|---|---:|")
    print(f"| VOC folder | {rates['voc']:.1f} |")
    print(f"| TFRecord, 4 shards | {rates['tfrecord']:.1f} |")
    print(f"| ratio TFRecord / VOC | {rates['tfrecord'] / rates['voc']:.2f} |\n", flush=True)

    servers = []
    variants = {"local": build_dataset(tfr, split=split, training=True,
                                       batch_size=args.batch_size)}
    for workers in (1, 2):
        dispatcher = service.start_dispatcher(port=0)
        servers.append(dispatcher)
        for _ in range(workers):
            servers.append(service.start_worker(dispatcher_address=dispatcher.target,
                                                host="localhost"))
        cfg = dataclasses.replace(tfr, service=dispatcher.target)
        variants[f"service, {workers} worker{'s' if workers > 1 else ''}"] = build_dataset(
            cfg, split=split, training=True, batch_size=args.batch_size)
    rates = interleaved(variants, batches=args.batches, repeats=args.repeats)
    print("| TFRecord pipeline | images/s |")
    print("|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print(f"| ratio 2 workers / 1 worker | "
          f"{rates['service, 2 workers'] / rates['service, 1 worker']:.2f} |")
    print(f"| ratio 1 worker / local | {rates['service, 1 worker'] / rates['local']:.2f} |")
    del servers
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
