"""R-FCN inference time on this machine vs a plain keras.applications ResNet forward.

Prints markdown tables:
  1. per backbone (ResNet-50, ResNet-101): plain keras.applications ResNet (include_top=False)
     forward vs R-FCN `detect` (300 RoIs), medians, and their ratio (target <= 2.2x);
  2. R-FCN with 300 vs 2000 RoIs (target: growth <= 10%);
  3. the time split: backbone, RPN + proposals, PS head, post-processing (differences of
     medians of nested stages, each stage its own tf.function; under a fluctuating load a
     small stage's difference can come out noisy, even negative), and the end-to-end time of
     an original image of the same size through THE inference path (`rfcn_tf.inference.
     preprocess.detect_images`: resize to the shorter side --height, pad, detect, rescale to
     original pixels), what `rfcn_tf.load(...).predict` and the serving graph run;
  4. Deformable R-FCN (the voc07_resnet101_dcn preset's layout: deformable 3x3 convs in
     res5a/b/c, deformable PS-RoI pooling with 4x4 samples per bin and per-class offsets) vs
     the plain R-FCN `detect`, same rounds (target <= 1.3x). `--deformable-only` times just
     these two (quicker).

Random weights (nothing is downloaded); every measured function is a tf.function, warmed up
first; medians of `--repeats` rounds, each round running every measured function once (the
ratios of the minima are shown too: on a shared machine the minimum is the run least
disturbed by other processes). Timings taken while other processes load the CPU are
noisy: compare numbers within one run.

    python benchmarks/inference.py [--height 600 --width 1000 --classes 20 --repeats 7]
    python benchmarks/inference.py --depths 50 --deformable-only --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _timing import resolved

from rfcn_tf.inference.preprocess import detect_images
from rfcn_tf.model.backbones import ResNetBackbone
from rfcn_tf.model.detector import RFCN
from rfcn_tf.model.sections import HeadConfig, RPNConfig


def interleaved_medians(fns, repeats):
    """Median seconds of each zero-argument callable, measured in rounds (each round runs
    every callable once), so that a change of machine load hits all of them alike."""
    for fn in fns.values():  # warm-up: tracing, oneDNN primitive caches
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return (
        {name: statistics.median(values) for name, values in times.items()},
        {name: min(values) for name, values in times.items()},
    )


def run_sync(fn, *args):
    return lambda: resolved(fn(*args))


def build_model(depth, num_classes, rois, impl, deformable=False):
    head = HeadConfig(psroi_impl=impl)
    if deformable:  # configs/voc07_resnet101_dcn.yaml's head
        head = HeadConfig(
            psroi_impl=impl,
            pooling_mode="deformable",
            sampling_ratio=4,
            trans_std=0.1,
            deformable_class_offsets=True,
        )
    return RFCN(
        backbone=ResNetBackbone(
            depth=depth, deformable_blocks=3 if deformable else 0, deformable_impl=impl
        ),
        num_classes=num_classes,
        rpn=RPNConfig(post_nms_top_n_test=rois),
        head=head,
    )


def stage_functions(model, image_spec, shape_spec):
    """tf.functions for the nested stages: backbone; + RPN/proposals; + head; + postprocess."""

    @tf.function(input_signature=[image_spec])
    def backbone(images):
        return model.backbone(images, training=False)

    @tf.function(input_signature=[image_spec, shape_spec])
    def proposals(images, shapes):
        rpn_features, head_features = model.backbone(images, training=False)
        rpn = model.rpn(rpn_features, shapes, proposal_counts="test")
        return head_features, rpn["proposals"], rpn["num_proposals"]

    @tf.function(input_signature=[image_spec, shape_spec])
    def head(images, shapes):
        out = model({"images": images, "image_shapes": shapes}, training=False)
        return out["class_probs"], out["box_deltas"]

    @tf.function(input_signature=[image_spec, shape_spec])
    def full(images, shapes):
        return model.detect_raw(images, shapes)

    return backbone, proposals, head, full


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--height", type=int, default=600, help="image height, pixels")
    parser.add_argument("--width", type=int, default=1000, help="image width, pixels")
    parser.add_argument("--classes", type=int, default=20, help="C, object classes (VOC: 20)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement")
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 101], help="ResNet depths")
    parser.add_argument(
        "--impl", default="auto", choices=["auto", "custom", "tf"], help="PS-RoI pooling impl"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="TF intra/inter-op threads (0: TF default)"
    )
    parser.add_argument(
        "--deformable-only",
        action="store_true",
        help="time only plain vs Deformable R-FCN detect (table 4)",
    )
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(0)
    h, w = args.height, args.width
    images = tf.constant(np.random.default_rng(0).integers(0, 256, [1, h, w, 3]), tf.uint8)
    shapes = tf.constant([[h, w]], tf.int32)
    image_spec = tf.TensorSpec([None, None, None, 3], tf.uint8)
    shape_spec = tf.TensorSpec([None, 2], tf.int32)

    rows, roi_rows, split_rows, dcn_rows = [], [], [], []
    for depth in args.depths:
        name = f"ResNet-{depth}"
        dcn_model = build_model(depth, args.classes, 300, args.impl, deformable=True)
        dcn_full = stage_functions(dcn_model, image_spec, shape_spec)[-1]
        if args.deformable_only:
            model = build_model(depth, args.classes, 300, args.impl)
            full = stage_functions(model, image_spec, shape_spec)[-1]
            t, t_min = interleaved_medians(
                {"full": run_sync(full, images, shapes), "dcn": run_sync(dcn_full, images, shapes)},
                args.repeats,
            )
            dcn_rows.append(
                (name, t["full"], t["dcn"], t["dcn"] / t["full"], t_min["dcn"] / t_min["full"])
            )
            model = dcn_model = None
            continue
        factory = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}[depth]
        plain = factory(include_top=False, weights=None, input_shape=(None, None, 3))
        plain_fn = tf.function(lambda x: plain(x, training=False))  # noqa: B023 (used in this iteration)
        floats = tf.cast(images, tf.float32)
        model = build_model(depth, args.classes, 300, args.impl)
        model_2000 = build_model(depth, args.classes, 2000, args.impl)
        backbone, proposals, head, full = stage_functions(model, image_spec, shape_spec)
        full_2000 = stage_functions(model_2000, image_spec, shape_spec)[-1]
        end_to_end = tf.function(
            lambda x, m=model: detect_images(m.detect, [x], min_size=min(h, w), max_size=max(h, w)),
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        )
        t, t_min = interleaved_medians(
            {
                "plain": run_sync(plain_fn, floats),
                "full": run_sync(full, images, shapes),
                "full_2000": run_sync(full_2000, images, shapes),
                "backbone": run_sync(backbone, images),
                "proposals": run_sync(proposals, images, shapes),
                "head": run_sync(head, images, shapes),
                "end_to_end": run_sync(end_to_end, images[0]),
                "dcn": run_sync(dcn_full, images, shapes),
            },
            args.repeats,
        )
        plain = model = model_2000 = dcn_model = None  # free the weights before the next depth
        dcn_rows.append(
            (name, t["full"], t["dcn"], t["dcn"] / t["full"], t_min["dcn"] / t_min["full"])
        )
        rows.append(
            (name, t["plain"], t["full"], t["full"] / t["plain"], t_min["full"] / t_min["plain"])
        )
        roi_rows.append(
            (
                name,
                t["full"],
                t["full_2000"],
                t["full_2000"] / t["full"] - 1,
                t_min["full_2000"] / t_min["full"] - 1,
            )
        )
        split_rows.append(
            (
                name,
                t["backbone"],
                t["proposals"] - t["backbone"],
                t["head"] - t["proposals"],
                t["full"] - t["head"],
                t["full"],
                t["end_to_end"],
            )
        )

    print(
        f"\nR-FCN inference, {h}x{w}, batch 1, C={args.classes}, k=7, psroi_impl={args.impl}, "
        f"medians of {args.repeats} (seconds)\n"
    )
    if args.deformable_only:
        _print_deformable(dcn_rows)
        return
    print(
        "| backbone | plain keras ResNet forward | R-FCN detect (300 RoIs) | ratio (target <= 2.2) "
        "| ratio of minima |"
    )
    print("|---|---|---|---|---|")
    for name, plain_t, ours, ratio, ratio_min in rows:
        print(f"| {name} | {plain_t:.3f} | {ours:.3f} | {ratio:.2f}x | {ratio_min:.2f}x |")
    print("\n| backbone | 300 RoIs | 2000 RoIs | growth (target <= 10%) | growth of minima |")
    print("|---|---|---|---|---|")
    for name, t300, t2000, growth, growth_min in roi_rows:
        print(
            f"| {name} | {t300:.3f} | {t2000:.3f} | {100 * growth:+.1f}% | {100 * growth_min:+.1f}% |"
        )
    print(
        "\n| backbone | backbone (dilated) | RPN + proposals | PS head | post-processing | total "
        "| end-to-end (rfcn_tf.inference) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, *values in split_rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    _print_deformable(dcn_rows)


def _print_deformable(dcn_rows):
    print(
        "\n| backbone | R-FCN detect | Deformable R-FCN detect (res5a-c DCN + deformable "
        "PS-RoI pooling) | ratio (target <= 1.3) | ratio of minima |"
    )
    print("|---|---|---|---|---|")
    for name, plain_t, dcn_t, ratio, ratio_min in dcn_rows:
        print(f"| {name} | {plain_t:.3f} | {dcn_t:.3f} | {ratio:.2f}x | {ratio_min:.2f}x |")


if __name__ == "__main__":
    main()
