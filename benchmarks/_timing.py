"""Timing helpers shared by the op benchmarks (benchmarks/psroi_pool.py,
benchmarks/deformable_ops.py, benchmarks/inference.py): interleaved medians, waiting for
results, the benchmark RoIs, ratios to a baseline.

Imported as a sibling module (`from _timing import ...`): the scripts run as
`python benchmarks/<name>.py`, which puts benchmarks/ first on sys.path.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import tensorflow as tf

PARTS = ("fwd", "fwd_bwd")


def interleaved_medians_ms(fns: dict, rounds: int, repeats: int, warmup: int) -> dict:
    """{name: (median wall ms, median process-CPU ms)} of each zero-argument callable.

    Each round runs every callable `repeats` times in a block (warm caches, as in a training
    loop); the rounds alternate the callables, so a load change on a shared machine affects them
    alike. CPU time (all threads of this process) is the less load-sensitive measure."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()  # re-warm after the other callables
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
    return {
        name: (1000.0 * statistics.median(wall[name]), 1000.0 * statistics.median(cpu[name]))
        for name in fns
    }


def resolved(outputs):
    """Waits for a call's result tensors (any nest of them: a tensor, a tuple, a dict) without
    copying them.

    `np.asarray` of a CPU EagerTensor shares its buffer; `EagerTensor.numpy()` copies it, and for
    the 10 MB feature gradient of these benchmarks that memcpy was ~15 % of the compiled PS-RoI
    op's forward + backward profile (perf, 300 RoIs): a cost that is the same for every
    implementation, is no part of any, and pulls every ratio towards 1."""
    return tf.nest.map_structure(np.asarray, outputs)


def random_rois(rng: np.random.Generator, num_rois: int, image_h: int, image_w: int):
    """float32 rois [R, 5] (0, y1, x1, y2, x2) inside an image_h x image_w image, sides of
    32..400 px (draws size, then y1, then x1 from `rng`)."""
    size = rng.uniform(32, 400, (num_rois, 2))
    y1 = rng.uniform(0, image_h - size[:, 0])
    x1 = rng.uniform(0, image_w - size[:, 1])
    rois = np.column_stack([np.zeros(num_rois), y1, x1, y1 + size[:, 0], x1 + size[:, 1]])
    return rois.astype(np.float32)


def ratios_to(ms: dict, name, baseline) -> dict:
    """{"wall": [fwd, fwd_bwd], "cpu": [fwd, fwd_bwd]}: `name`'s medians over `baseline`'s, for
    `ms` keyed (name, "fwd" | "fwd_bwd") -> (wall ms, CPU ms)."""
    return {
        kind: [ms[(name, part)][index] / ms[(baseline, part)][index] for part in PARTS]
        for kind, index in (("wall", 0), ("cpu", 1))
    }


def intra_op_threads(tf) -> int:
    """TensorFlow's intra-op thread count (0 there means one per core)."""
    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
