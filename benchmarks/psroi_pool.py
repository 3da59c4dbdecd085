"""PS-RoI pooling: the compiled op (custom) and the pure-TF twin (tf) vs crop_and_resize (crop).

Workload (the R-FCN head at 600 x 1000, stride 16): features 1 x 38 x 63 x (7*7*21), k = 7,
C = 21, sampling_ratio 2, RoIs of 32 to 400 px inside the 600 x 1000 image, R = 300 and
R = 2000; both modes. The baseline `crop` is the natural stock-op formulation of the same pooling
with `tf.image.crop_and_resize`, one crop per bin from its channel group (see
`crop_and_resize_pool`: bilinear: sr x sr samples averaged; avg: one sample per cell of the
bin, masked to the bin, so it equals the avg pooling exactly). Every measured call is a
tf.function (forward, and forward + backward through a GradientTape, returning both the output
and the gradient), warmed up first. The implementations run in alternating rounds of
`--repeats` calls each (warm caches within a round; load changes on a shared machine hit all
alike); the table shows medians of all `--rounds` x `--repeats` runs in milliseconds, wall clock
and process CPU time (all threads, TF's spinning workers included), and the ratios to crop
(targets: custom <= 0.333 in every row; the twin's forward <= 1 at R = 300). Wall times taken
while other processes load the CPU are noisy (a descheduled worker thread stalls a whole op):
compare within one run.

    python benchmarks/psroi_pool.py [--rounds 3] [--repeats 7] [--warmup 3] [--rois 300 2000]
                                    [--modes avg bilinear] [--impls crop tf custom] [--threads N]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from _timing import interleaved_medians_ms, intra_op_threads, random_rois, ratios_to, resolved

from rfcn_tf.ops.psroi_pool import custom_op_available, custom_op_load_error, ps_roi_pool

HEIGHT, WIDTH, K, NUM_CLASSES, STRIDE = 38, 63, 7, 21, 16
IMAGE_H, IMAGE_W = 600, 1000


def make_inputs(num_rois: int, seed: int = 0):
    """features [1, 38, 63, 7*7*21] float32, rois [R, 5] (0, y1, x1, y2, x2) inside the image
    with sides of 32..400 px, and an output gradient [R, 7, 7, 21]."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((1, HEIGHT, WIDTH, K * K * NUM_CLASSES)).astype(np.float32)
    rois = random_rois(rng, num_rois, IMAGE_H, IMAGE_W)
    grad = rng.standard_normal((num_rois, K, K, NUM_CLASSES)).astype(np.float32)
    return tf.constant(features), tf.constant(rois), tf.constant(grad)


def crop_and_resize_pool(features, rois, *, output_size, spatial_scale, mode, sampling_ratio):
    """The stock-op baseline: PS-RoI pooling as one `tf.image.crop_and_resize` crop per bin.

    The feature map is regrouped into k*k "images" [B*k*k, H, W, C], one per bin position with
    its C-channel group (one transpose per call); bin (i, j) of RoI r is a box on image
    b*k*k + i*k + j whose crop samples are averaged.
    bilinear: an sr x sr crop whose box spans the bin's first to last PSRoIAlign sample point
    (sub-bin centres, corners coord*scale - 0.5), so the samples are PSRoIAlign's (only the
    border rule differs: crop_and_resize reads a point above/left of the first cell centre as 0
    where PSRoIAlign clamps it to the first cell).
    avg: the same pooling exactly: one sample per cell of the bin's integer cell range (bilinear
    sampling at cell centres reads the cell itself), on a crop as large as the largest bin of
    the call, cells past a bin's own range masked out, sum / area (empty bins 0)."""
    k, sr = int(output_size), max(int(sampling_ratio), 1)
    kk = k * k
    shape = tf.shape(features)
    batch, height, width = shape[0], shape[1], shape[2]
    num_rois = tf.shape(rois)[0]
    groups = tf.reshape(features, [batch, height, width, kk, -1])
    groups = tf.reshape(tf.transpose(groups, [0, 3, 1, 2, 4]), [batch * kk, height, width, -1])
    scaled = rois[:, 1:5] * spatial_scale
    steps = tf.range(k, dtype=tf.float32)
    if mode == "avg":
        rounded = tf.sign(scaled) * tf.floor(tf.abs(scaled) + 0.5)
        y1, x1, y2, x2 = tf.unstack(rounded, axis=1)

        def axis(start, size, limit):  # the cells [lo, hi) of each bin, [R, k]
            lo = start[:, None] + tf.floor(steps * size[:, None] / k)
            hi = start[:, None] + tf.math.ceil((steps + 1.0) * size[:, None] / k)
            limit = tf.cast(limit, tf.float32)
            return tf.clip_by_value(lo, 0.0, limit), tf.clip_by_value(hi, 0.0, limit)

        h_lo, h_hi = axis(y1, tf.maximum(y2 - y1, 1.0), height)
        w_lo, w_hi = axis(x1, tf.maximum(x2 - x1, 1.0), width)
        crop_h = tf.cast(tf.maximum(tf.reduce_max(h_hi - h_lo), 1.0), tf.int32)
        crop_w = tf.cast(tf.maximum(tf.reduce_max(w_hi - w_lo), 1.0), tf.int32)
        ya, yb = h_lo, h_lo + tf.cast(crop_h - 1, tf.float32)
        xa, xb = w_lo, w_lo + tf.cast(crop_w - 1, tf.float32)
        crop_size = tf.stack([crop_h, crop_w])
    else:
        y1, x1, y2, x2 = tf.unstack(scaled - 0.5, axis=1)

        def axis(start, size):  # first / last sample point of each bin, [R, k]
            bin_size = size[:, None] / k
            first = start[:, None] + steps * bin_size + 0.5 * bin_size / sr
            return first, first + (sr - 1) * bin_size / sr

        ya, yb = axis(y1, y2 - y1)
        xa, xb = axis(x1, x2 - x1)
        crop_size = [sr, sr]
    ny = tf.maximum(tf.cast(height, tf.float32) - 1.0, 1.0)
    nx = tf.maximum(tf.cast(width, tf.float32) - 1.0, 1.0)
    grid = [num_rois, k, k]
    boxes = tf.stack(
        [
            tf.broadcast_to(ya[:, :, None] / ny, grid),
            tf.broadcast_to(xa[:, None, :] / nx, grid),
            tf.broadcast_to(yb[:, :, None] / ny, grid),
            tf.broadcast_to(xb[:, None, :] / nx, grid),
        ],
        axis=-1,
    )
    box_ind = tf.cast(rois[:, 0], tf.int32)[:, None] * kk + tf.range(kk)[None, :]
    crops = tf.image.crop_and_resize(
        groups, tf.reshape(boxes, [-1, 4]), tf.reshape(box_ind, [-1]), crop_size
    )  # [R*k*k, h, w, C]
    if mode == "avg":
        rows = tf.range(crop_size[0], dtype=tf.float32)
        cols = tf.range(crop_size[1], dtype=tf.float32)
        in_y = rows[None, None, :] < (h_hi - h_lo)[:, :, None]  # [R, k, h]
        in_x = cols[None, None, :] < (w_hi - w_lo)[:, :, None]  # [R, k, w]
        mask = tf.logical_and(in_y[:, :, None, :, None], in_x[:, None, :, None, :])
        area = (h_hi - h_lo)[:, :, None] * (w_hi - w_lo)[:, None, :]  # [R, k, k]
        mask = tf.reshape(tf.cast(mask, crops.dtype), [-1, crop_size[0], crop_size[1], 1])
        sums = tf.reduce_sum(crops * mask, axis=[1, 2])
        pooled = tf.math.divide_no_nan(sums, tf.reshape(area, [-1, 1]))
    else:
        pooled = tf.reduce_mean(crops, axis=[1, 2])
    return tf.reshape(pooled, [num_rois, k, k, tf.shape(crops)[3]])


def build_functions(impl: str, mode: str):
    """tf.functions (forward, forward + backward) of one implementation. The backward function
    returns the pooled output too: the gradient op does not read the forward output, so without
    it the forward would be pruned and only the backward timed."""
    kwargs = dict(output_size=K, spatial_scale=1.0 / STRIDE, mode=mode, sampling_ratio=2)
    if impl == "crop":
        pool = crop_and_resize_pool
    else:
        kwargs["impl"] = impl
        pool = ps_roi_pool

    @tf.function
    def forward(f, r):
        return pool(f, r, **kwargs)

    @tf.function
    def forward_backward(f, r, g):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = pool(f, r, **kwargs)
        return out, tape.gradient(out, f, output_gradients=g)

    return forward, forward_backward


IMPLS = ("crop", "tf", "custom")  # the crop_and_resize baseline, the pure-TF twin, the op


def measure(mode: str, num_rois: int, rounds: int, repeats: int, warmup: int, impls=IMPLS) -> dict:
    """{(impl, "fwd" | "fwd_bwd"): (median wall ms, median CPU ms)} for each impl."""
    features, rois, grad = make_inputs(num_rois)
    fns = {}
    for impl in impls:
        forward, forward_backward = build_functions(impl, mode)
        fns[(impl, "fwd")] = lambda fwd=forward: resolved(fwd(features, rois))
        fns[(impl, "fwd_bwd")] = lambda fb=forward_backward: resolved(fb(features, rois, grad))
    return interleaved_medians_ms(fns, rounds, repeats, warmup)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds alternating the implementations (default 3)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed runs per implementation and round; the median over all "
        "rounds is reported (default 7)",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed runs first: tracing and caches (default 3)"
    )
    parser.add_argument(
        "--rois",
        type=int,
        nargs="+",
        default=[300, 2000],
        help="RoI counts to measure (default 300 2000)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["avg", "bilinear"],
        choices=["avg", "bilinear"],
        help="modes to measure (default both)",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        default=list(IMPLS),
        choices=list(IMPLS),
        help="implementations to measure (default all; crop is always kept)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow intra-op threads (default 0: one per core)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    if not custom_op_available():
        print(f"error: the compiled op is not available: {custom_op_load_error()}")
        return 1

    print(
        f"PS-RoI pooling, features 1x{HEIGHT}x{WIDTH}x{K * K * NUM_CLASSES}, k={K}, "
        f"C={NUM_CLASSES}, sampling_ratio 2, RoIs 32..400 px in {IMAGE_H}x{IMAGE_W}; "
        f"TensorFlow {tf.__version__}, intra-op threads "
        f"{intra_op_threads(tf)}; "
        f"medians of {args.rounds} x {args.repeats} runs; crop = crop_and_resize baseline, "
        "tf = pure-TF twin, custom = compiled op\n"
    )
    print(
        "| impl | mode | R | fwd ms | fwd+bwd ms | fwd CPU ms | fwd+bwd CPU ms "
        "| / crop wall (fwd, fwd+bwd) | / crop CPU (fwd, fwd+bwd) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {}
    for mode in args.modes:
        for num_rois in args.rois:
            impls = ["crop"] + [i for i in args.impls if i != "crop"]
            ms = measure(mode, num_rois, args.rounds, args.repeats, args.warmup, impls)
            for impl in impls:
                fwd, fwd_bwd = ms[(impl, "fwd")], ms[(impl, "fwd_bwd")]
                row = (
                    f"| {impl} | {mode} | {num_rois} | {fwd[0]:.2f} | {fwd_bwd[0]:.2f} | "
                    f"{fwd[1]:.2f} | {fwd_bwd[1]:.2f} |"
                )
                if impl == "crop":
                    print(row + " | |")
                    continue
                ratios = ratios_to(ms, impl, "crop")
                for kind in ratios:
                    key = (impl, mode, kind)
                    worst[key] = max(worst.get(key, 0.0), *ratios[kind])
                print(
                    row
                    + " {:.3f}, {:.3f} | {:.3f}, {:.3f} |".format(*ratios["wall"], *ratios["cpu"])
                )
    print()
    names = {"custom": "custom/crop (target <= 0.333)", "tf": "twin/crop"}
    for mode in args.modes:
        for impl in impls[1:]:
            print(
                f"{mode}: worst {names[impl]} over fwd and fwd+bwd: wall "
                f"{worst[(impl, mode, 'wall')]:.3f}, CPU {worst[(impl, mode, 'cpu')]:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
