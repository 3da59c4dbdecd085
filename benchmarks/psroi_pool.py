"""PS-RoI pooling: the compiled op (impl="custom") vs the pure-TF twin (impl="tf").

Workload (the R-FCN head at 600 x 1000, stride 16): features 1 x 38 x 63 x (7*7*21), k = 7,
C = 21, RoIs of 32 to 400 px inside the 600 x 1000 image, R = 300 and R = 2000; both modes.
Every measured call is a tf.function (forward, and forward + backward through a GradientTape,
returning both the output and the gradient), warmed up first. The implementations run in
alternating rounds of `--repeats` calls each (warm caches within a round; load changes on a
shared machine hit both alike); the table shows medians of all `--rounds` x `--repeats` runs in
milliseconds, wall clock and process CPU time (all threads), and the ratios custom / twin
(target: <= 0.33 in every row). Wall times taken while other processes load the CPU are noisy (a
descheduled worker thread stalls a whole op): compare within one run, and prefer the CPU-time
ratio on a shared machine.

    python benchmarks/psroi_pool.py [--rounds 3] [--repeats 7] [--warmup 3] [--rois 300 2000]
                                    [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from rfcn_tf.ops.psroi_pool import (  # noqa: E402
    custom_op_available,
    custom_op_load_error,
    ps_roi_pool,
)

HEIGHT, WIDTH, K, NUM_CLASSES, STRIDE = 38, 63, 7, 21, 16
IMAGE_H, IMAGE_W = 600, 1000


def make_inputs(num_rois: int, seed: int = 0):
    """features [1, 38, 63, 7*7*21] float32, rois [R, 5] (0, y1, x1, y2, x2) inside the image
    with sides of 32..400 px, and an output gradient [R, 7, 7, 21]."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((1, HEIGHT, WIDTH, K * K * NUM_CLASSES)).astype(np.float32)
    size = rng.uniform(32, 400, (num_rois, 2))
    y1 = rng.uniform(0, IMAGE_H - size[:, 0])
    x1 = rng.uniform(0, IMAGE_W - size[:, 1])
    rois = np.column_stack([np.zeros(num_rois), y1, x1, y1 + size[:, 0], x1 + size[:, 1]])
    grad = rng.standard_normal((num_rois, K, K, NUM_CLASSES)).astype(np.float32)
    return tf.constant(features), tf.constant(rois.astype(np.float32)), tf.constant(grad)


def build_functions(impl: str, mode: str):
    """tf.functions (forward, forward + backward) of one implementation. The backward function
    returns the pooled output too: the gradient op does not read the forward output, so without
    it the forward would be pruned and only the backward timed."""
    kwargs = dict(output_size=K, spatial_scale=1.0 / STRIDE, mode=mode, sampling_ratio=2,
                  impl=impl)

    @tf.function
    def forward(f, r):
        return ps_roi_pool(f, r, **kwargs)

    @tf.function
    def forward_backward(f, r, g):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = ps_roi_pool(f, r, **kwargs)
        return out, tape.gradient(out, f, output_gradients=g)

    return forward, forward_backward


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
    return {name: (1000.0 * statistics.median(wall[name]), 1000.0 * statistics.median(cpu[name]))
            for name in fns}


def measure(mode: str, num_rois: int, rounds: int, repeats: int, warmup: int) -> dict:
    """{(impl, "fwd" | "fwd_bwd"): median ms} for impl in ("tf", "custom")."""
    features, rois, grad = make_inputs(num_rois)
    fns = {}
    for impl in ("tf", "custom"):
        forward, forward_backward = build_functions(impl, mode)
        fns[(impl, "fwd")] = lambda fwd=forward: fwd(features, rois).numpy()
        fns[(impl, "fwd_bwd")] = lambda fb=forward_backward: [
            t.numpy() for t in fb(features, rois, grad)]
    return interleaved_medians_ms(fns, rounds, repeats, warmup)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds alternating the implementations (default 3)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed runs per implementation and round; the median over all "
                             "rounds is reported (default 7)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed runs first: tracing and caches (default 3)")
    parser.add_argument("--rois", type=int, nargs="+", default=[300, 2000],
                        help="RoI counts to measure (default 300 2000)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads (default 0: one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    if not custom_op_available():
        print(f"error: the compiled op is not available: {custom_op_load_error()}")
        return 1

    print(f"PS-RoI pooling, features 1x{HEIGHT}x{WIDTH}x{K * K * NUM_CLASSES}, k={K}, "
          f"C={NUM_CLASSES}, RoIs 32..400 px in {IMAGE_H}x{IMAGE_W}; TensorFlow "
          f"{tf.__version__}, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}; "
          f"medians of {args.rounds} x {args.repeats} runs\n")
    print("| impl | mode | R | fwd ms | fwd+bwd ms | fwd CPU ms | fwd+bwd CPU ms "
          "| custom/twin wall (fwd, fwd+bwd) | custom/twin CPU (fwd, fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {"wall": 0.0, "cpu": 0.0}
    for mode in ("avg", "bilinear"):
        for num_rois in args.rois:
            ms = measure(mode, num_rois, args.rounds, args.repeats, args.warmup)
            ratios = {}
            for kind, index in (("wall", 0), ("cpu", 1)):
                ratios[kind] = [ms[("custom", part)][index] / ms[("tf", part)][index]
                                for part in ("fwd", "fwd_bwd")]
                worst[kind] = max(worst[kind], *ratios[kind])
            for impl in ("tf", "custom"):
                fwd, fwd_bwd = ms[(impl, "fwd")], ms[(impl, "fwd_bwd")]
                row = (f"| {impl} | {mode} | {num_rois} | {fwd[0]:.2f} | {fwd_bwd[0]:.2f} | "
                       f"{fwd[1]:.2f} | {fwd_bwd[1]:.2f} |")
                if impl == "custom":
                    row += (" {:.3f}, {:.3f} | {:.3f}, {:.3f} |".format(
                        *ratios["wall"], *ratios["cpu"]))
                else:
                    row += " | |"
                print(row)
    print(f"\nworst ratio custom/twin: wall {worst['wall']:.3f}, CPU {worst['cpu']:.3f} "
          "(target <= 0.333)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
