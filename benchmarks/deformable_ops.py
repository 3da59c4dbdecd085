"""Deformable ops vs their plain counterparts (issue 15 item 5), and torchvision's deform_conv2d.

* Deformable PS-RoI pooling (``deform_ps_roi_pool``, compiled) vs the plain bilinear PS-RoI op
  (``ps_roi_pool(mode="bilinear")``, compiled): features 1 x 38 x 63 x (7*7*21), k = 7, C = 21,
  sampling_ratio 2, RoIs of 32..400 px in a 600 x 1000 image, R = 300 and 2000, random offsets
  (N(0, 1), trans_std 0.1). Target: deformable <= 1.5x plain.
* Deformable 3x3 conv (``deform_conv2d``, compiled im2col + stock MatMul; DCN v1 and v2 with a
  mask) vs ``tf.nn.conv2d`` of the same shape: a conv5-like 1 x 38 x 63 x 512 -> 512, stride 1,
  SAME, random offsets N(0, 1). Target: deformable <= 3x plain.
* torchvision.ops.deform_conv2d (NCHW, same shape, same thread count) when ``--torch-python``
  names a Python with torch + torchvision: run in that process after the TF rows (not
  interleaved with them), reported in the same table.

Every TF call is a tf.function (forward; forward + backward through a GradientTape returning the
output and the gradients), warmed up; the callables of one comparison run in alternating rounds
of ``--repeats`` calls; the table shows medians (wall ms and process CPU ms) and the ratios
deformable / plain of one interleaved run.

    python benchmarks/deformable_ops.py [--rounds 3] [--repeats 5] [--rois 300 2000]
                                        [--torch-python /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from _timing import interleaved_medians_ms, intra_op_threads, random_rois, ratios_to, resolved

from rfcn_tf.ops.deform_conv import deform_conv2d
from rfcn_tf.ops.deform_psroi_pool import (
    custom_op_available,
    custom_op_load_error,
    deform_ps_roi_pool,
)
from rfcn_tf.ops.psroi_pool import ps_roi_pool

HEIGHT, WIDTH, K, NUM_CLASSES, STRIDE = 38, 63, 7, 21, 16
IMAGE_H, IMAGE_W = 600, 1000
CONV_CIN = CONV_COUT = 512


def pool_functions(num_rois: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    features = tf.constant(
        rng.standard_normal((1, HEIGHT, WIDTH, K * K * NUM_CLASSES)).astype(np.float32)
    )
    rois = tf.constant(random_rois(rng, num_rois, IMAGE_H, IMAGE_W))
    offsets = tf.constant(rng.standard_normal((num_rois, K, K, 2)).astype(np.float32))
    grad = tf.constant(rng.standard_normal((num_rois, K, K, NUM_CLASSES)).astype(np.float32))
    common = {
        "output_size": K,
        "spatial_scale": 1.0 / STRIDE,
        "sampling_ratio": 2,
        "impl": "custom",
    }

    @tf.function
    def plain(f):
        return ps_roi_pool(f, rois, mode="bilinear", **common)

    @tf.function
    def deform(f, o):
        return deform_ps_roi_pool(f, rois, o, trans_std=0.1, **common)

    @tf.function
    def plain_fb(f):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = plain(f)
        return out, tape.gradient(out, f, output_gradients=grad)

    @tf.function
    def deform_fb(f, o):
        with tf.GradientTape() as tape:
            tape.watch([f, o])
            out = deform(f, o)
        return (out, *tape.gradient(out, [f, o], output_gradients=grad))

    return {
        ("plain bilinear PS-RoI", "fwd"): lambda: resolved(plain(features)),
        ("deformable PS-RoI", "fwd"): lambda: resolved(deform(features, offsets)),
        ("plain bilinear PS-RoI", "fwd_bwd"): lambda: resolved(plain_fb(features)),
        ("deformable PS-RoI", "fwd_bwd"): lambda: resolved(deform_fb(features, offsets)),
    }


def conv_functions(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((1, HEIGHT, WIDTH, CONV_CIN)).astype(np.float32))
    w = tf.constant((rng.standard_normal((3, 3, CONV_CIN, CONV_COUT)) / 40).astype(np.float32))
    offsets = tf.constant(rng.standard_normal((1, HEIGHT, WIDTH, 18)).astype(np.float32))
    mask = tf.constant(rng.uniform(0, 1, (1, HEIGHT, WIDTH, 9)).astype(np.float32))
    grad = tf.constant(rng.standard_normal((1, HEIGHT, WIDTH, CONV_COUT)).astype(np.float32))

    @tf.function
    def plain(x_, w_):
        return tf.nn.conv2d(x_, w_, 1, "SAME")

    @tf.function
    def dcn(x_, w_, o_):
        return deform_conv2d(x_, o_, w_, impl="custom")

    @tf.function
    def dcn2(x_, w_, o_, m_):
        return deform_conv2d(x_, o_, w_, mask=m_, impl="custom")

    def fb(fn, *args):
        @tf.function
        def run(*a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                out = fn(*a)
            return (out, *tape.gradient(out, a, output_gradients=grad))

        return lambda: resolved(run(*args))

    return {
        ("tf.nn.conv2d 3x3", "fwd"): lambda: resolved(plain(x, w)),
        ("deform_conv2d v1", "fwd"): lambda: resolved(dcn(x, w, offsets)),
        ("deform_conv2d v2 (mask)", "fwd"): lambda: resolved(dcn2(x, w, offsets, mask)),
        ("tf.nn.conv2d 3x3", "fwd_bwd"): fb(plain, x, w),
        ("deform_conv2d v1", "fwd_bwd"): fb(dcn, x, w, offsets),
        ("deform_conv2d v2 (mask)", "fwd_bwd"): fb(dcn2, x, w, offsets, mask),
    }


_TORCH_SCRIPT = textwrap.dedent("""
    import json, statistics, sys, time
    import torch
    from torchvision.ops import deform_conv2d
    rounds, repeats, threads = map(int, sys.argv[1:4])
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 512, 38, 63, generator=g, requires_grad=True)
    w = (torch.randn(512, 512, 3, 3, generator=g) / 40).requires_grad_()
    off = torch.randn(1, 18, 38, 63, generator=g, requires_grad=True)
    mask = torch.rand(1, 9, 38, 63, generator=g, requires_grad=True)
    grad = torch.randn(1, 512, 38, 63, generator=g)
    def fwd(m):
        with torch.no_grad():
            deform_conv2d(x, off, w, padding=1, mask=m)
    def fwd_bwd(m):
        out = deform_conv2d(x, off, w, padding=1, mask=m)
        torch.autograd.grad(out, [x, off, w] + ([m] if m is not None else []), grad)
    fns = {("torchvision deform_conv2d v1", "fwd"): lambda: fwd(None),
           ("torchvision deform_conv2d v2 (mask)", "fwd"): lambda: fwd(mask),
           ("torchvision deform_conv2d v1", "fwd_bwd"): lambda: fwd_bwd(None),
           ("torchvision deform_conv2d v2 (mask)", "fwd_bwd"): lambda: fwd_bwd(mask)}
    for fn in fns.values():
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            for _ in range(repeats):
                s, c = time.perf_counter(), time.process_time()
                fn()
                cpu[k].append(time.process_time() - c)
                wall[k].append(time.perf_counter() - s)
    print(json.dumps([[k[0], k[1], 1000 * statistics.median(wall[k]),
                       1000 * statistics.median(cpu[k])] for k in fns]))
    print(torch.__version__)
""")


def torchvision_rows(python: str, rounds: int, repeats: int, threads: int):
    """{(name, part): (wall ms, CPU ms)} from torchvision in `python`, or an error string."""
    try:
        proc = subprocess.run(
            [python, "-c", _TORCH_SCRIPT, str(rounds), str(repeats), str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    rows, version = proc.stdout.strip().splitlines()[-2:]
    return {(name, part): (wall, cpu) for name, part, wall, cpu in json.loads(rows)}, version


def print_table(title, ms, baseline, target):
    print(f"\n{title}\n")
    print(
        "| op | fwd ms | fwd+bwd ms | fwd CPU ms | fwd+bwd CPU ms | / baseline wall (fwd, "
        "fwd+bwd) | / baseline CPU (fwd, fwd+bwd) |"
    )
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    names = list(dict.fromkeys(name for name, _ in ms))
    for name in names:
        fwd, fb = ms[(name, "fwd")], ms[(name, "fwd_bwd")]
        row = f"| {name} | {fwd[0]:.1f} | {fb[0]:.1f} | {fwd[1]:.1f} | {fb[1]:.1f} |"
        if name == baseline:
            row += " 1, 1 | 1, 1 |"
        else:
            ratios = ratios_to(ms, name, baseline)
            wall, cpu = ratios["wall"], ratios["cpu"]
            if not name.startswith("torchvision"):
                worst = max(worst, *wall)
            row += f" {wall[0]:.2f}, {wall[1]:.2f} | {cpu[0]:.2f}, {cpu[1]:.2f} |"
        print(row)
    print(f"\nworst wall ratio of the compiled deformable op: {worst:.2f} (target <= {target})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rois", type=int, nargs="+", default=[300, 2000])
    parser.add_argument(
        "--torch-python",
        default="",
        help="a Python with torch + torchvision for the reference rows",
    )
    args = parser.parse_args(argv)
    if not custom_op_available():
        print(f"error: the compiled deformable ops are not available: {custom_op_load_error()}")
        return 1
    threads = intra_op_threads(tf)
    print(
        f"TensorFlow {tf.__version__}, {threads} intra-op threads; medians of "
        f"{args.rounds} x {args.repeats} interleaved runs"
    )
    for num_rois in args.rois:
        ms = interleaved_medians_ms(
            pool_functions(num_rois), args.rounds, args.repeats, args.warmup
        )
        print_table(
            f"PS-RoI pooling, R = {num_rois}, features 1x{HEIGHT}x{WIDTH}x"
            f"{K * K * NUM_CLASSES}, k={K}, C={NUM_CLASSES}, sampling_ratio 2",
            ms,
            "plain bilinear PS-RoI",
            1.5,
        )
    ms = interleaved_medians_ms(conv_functions(), args.rounds, args.repeats, args.warmup)
    note = "torchvision: not measured (no --torch-python given)"
    if args.torch_python:
        result = torchvision_rows(args.torch_python, args.rounds, args.repeats, threads)
        if isinstance(result, str):
            note = f"torchvision: not measured ({result})"
        else:
            ms.update(result[0])
            note = (
                f"torchvision {result[1]} rows: same shape (NCHW), torch threads = "
                f"{threads}, measured in its own process right after the TF rows"
            )
    print_table(
        f"3x3 conv 1x{HEIGHT}x{WIDTH}x{CONV_CIN} -> {CONV_COUT}, stride 1, SAME",
        ms,
        "tf.nn.conv2d 3x3",
        3,
    )
    print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
