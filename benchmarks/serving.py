"""Inference latency and throughput of the deployment paths at 600x1000, batch 1, 4, 8.

Prints a markdown table (median and min of ``--runs`` timed calls after ``--warmup`` untimed
ones, images/s, ratio to in-Python at the same batch) for each batch size of ``--batch-sizes``
and each path:

  1. in-Python: ``RFCN.detect`` (the model's tf.function) on the already resized and padded
     image, the way training-time evaluation calls it: with the compiled PS-RoI op (the
     reference, when the op is loaded; same weights) and with the pure-TF twin the export uses;
  2. SavedModel: the export's ``serving_default`` loaded with ``tf.saved_model.load`` (uint8
     image in, resize + pad + detect + normalize inside the graph);
  3. onnxruntime (CPU): the same signature converted by ``rfcn_tf.export.onnx``;
  4. with ``--int8``: onnxruntime on its static INT8 quantization (``quantize_onnx_int8``).

The model is ``--config`` (default: ResNet-50 with random weights on the VOC preset, 20
classes, test-time 300 RoIs) built with ``psroi_impl="tf"``; the image is the BCCD blood-cell
JPEG stretched to HxW when present, else a synthetic one; the serving resize is set to
(H, W) so it is the identity and every path sees the same pixels. TensorFlow and onnxruntime
both get ``--threads`` intra-op threads. The paths take turns call by call, so load from
other processes falls on all of them alike; still, compare rows of one run, not runs.

    python benchmarks/serving.py [--runs 10 --height 600 --width 1000 --skip-onnx]
        [--batch-sizes 1,4,8 --int8]
        [--config voc07_resnet101 --set model.backbone.name=resnet50 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rfcn_tf.data.sources.voc_xml import default_voc_root

BCCD_IMAGE = str(default_voc_root() / "JPEGImages" / "BloodImage_00000.jpg")
DEFAULT_OVERRIDES = ["model.backbone.name=resnet50", "model.backbone.weights=null"]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        default="voc07_resnet101",
        help="preset or YAML of the model (default: voc07_resnet101 with "
        "--set model.backbone.name=resnet50 unless --set is given)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="config overrides (repeatable)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="training checkpoint to load (default: random weights)"
    )
    parser.add_argument("--height", type=int, default=600, help="image height, pixels")
    parser.add_argument("--width", type=int, default=1000, help="image width, pixels")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per path first")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="intra-op threads for TensorFlow and onnxruntime (default: CPUs)",
    )
    parser.add_argument("--skip-onnx", action="store_true", help="no onnxruntime row")
    parser.add_argument(
        "--batch-sizes",
        default="1",
        help="comma-separated batch sizes, e.g. 1,4,8 (one row per path and size; images/s)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also onnxruntime on the INT8 model (rfcn_tf.export.onnx.quantize_onnx_int8, "
        "calibrated on 4 crops of the image)",
    )
    return parser.parse_args()


def _image(height: int, width: int):
    import numpy as np
    from PIL import Image

    if os.path.isfile(BCCD_IMAGE):
        with Image.open(BCCD_IMAGE) as img:
            return np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([yy * 255 // height, xx * 255 // width, np.full_like(yy, 90)], -1)
    for _ in range(12):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(20, 120)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def _time_interleaved(calls: dict, *, runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each path, the paths taking turns (round-robin) so load from other
    processes falls on all of them alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def _compiled_op_twin(model, args, overrides, num_classes: int, height: int, width: int):
    """The same detector with ``psroi_impl="custom"`` (the compiled PS-RoI op) and ``model``'s
    weights, or None when the op is not loaded here. Checks on one image that both give the
    same detections (the pooling differs only in summation order)."""
    import numpy as np
    import tensorflow as tf

    from rfcn_tf.config import load_config
    from rfcn_tf.model.builder import build_detector
    from rfcn_tf.ops.psroi_pool import custom_op_available

    if not custom_op_available():
        print("compiled PS-RoI op not loaded: no compiled-op in-Python row", file=sys.stderr)
        return None
    cfg = load_config(args.config, list(overrides) + ["model.head.psroi_impl=custom"])
    model_op = build_detector(cfg.model, num_classes=num_classes)
    padded_h, padded_w = -(-height // 16) * 16, -(-width // 16) * 16
    image = tf.constant(_image(height, width)[None])
    image = tf.image.pad_to_bounding_box(image, 0, 0, padded_h, padded_w)
    shapes = tf.constant([[height, width]], tf.int32)
    reference = model.detect(image, shapes)  # builds the variables of both
    model_op.detect(image, shapes)
    model_op.set_weights(model.get_weights())
    got = model_op.detect(image, shapes)
    gap = float(
        np.max(np.abs(reference["detection_scores"].numpy() - got["detection_scores"].numpy()))
    )
    print(f"compiled op vs twin: max |score difference| {gap:.2e}", file=sys.stderr)
    return model_op


def main() -> None:
    args = _parse()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import numpy as np

    from rfcn_tf.config import load_config
    from rfcn_tf.export.contract import INPUT_IMAGE, SIGNATURE_IMAGE
    from rfcn_tf.export.saved_model import export_saved_model
    from rfcn_tf.model.builder import build_detector

    overrides = args.overrides if args.overrides is not None else DEFAULT_OVERRIDES
    cfg = load_config(args.config, list(overrides) + ["model.head.psroi_impl=tf"])
    num_classes = len(cfg.data.class_names) if cfg.data.class_names else 20
    if args.checkpoint:
        from rfcn_tf.inference.backends import load_checkpoint_model

        model, _ = load_checkpoint_model(
            cfg, args.checkpoint, num_classes=num_classes, dataset_desc="the benchmark"
        )
    else:
        model = build_detector(cfg.model, num_classes=num_classes)
    height, width = args.height, args.width
    model_op = _compiled_op_twin(model, args, overrides, num_classes, height, width)
    image = _image(height, width)
    padded = np.zeros((-(-height // 16) * 16, -(-width // 16) * 16, 3), np.uint8)
    padded[:height, :width] = image
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    image_batches = {b: np.stack([image] * b) for b in sizes}
    image_batches_t = {b: tf.constant(image_batches[b]) for b in sizes}
    calls, images_per_call = {}, {}

    def add(name, batch, call):
        calls[f"{name}, batch {batch}"] = call
        images_per_call[f"{name}, batch {batch}"] = batch

    for b in sizes:
        padded_t = tf.constant(np.stack([padded] * b))
        shapes_t = tf.constant([[height, width]] * b, tf.int32)
        if model_op is not None:  # first: the reference of its batch size
            add(
                "in-Python `RFCN.detect`, compiled PS-RoI op (pre-resized, padded input)",
                b,
                lambda p=padded_t, s=shapes_t: model_op.detect(p, s)["num_detections"].numpy(),
            )
        add(
            "in-Python `RFCN.detect`, pure-TF twin (pre-resized, padded input)",
            b,
            lambda p=padded_t, s=shapes_t: model.detect(p, s)["num_detections"].numpy(),
        )

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = export_saved_model(
            model,
            class_names=[f"c{i}" for i in range(num_classes)],
            out_dir=tmp,
            model_name="bench",
            min_size=min(height, width),
            max_size=max(height, width),
            verify=False,
        )
        export_s = time.perf_counter() - started
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures[SIGNATURE_IMAGE]
        for b in sizes:
            add(
                "SavedModel `serving_default` (uint8 image in)",
                b,
                lambda b=b: serve(**{INPUT_IMAGE: image_batches_t[b]})["num_detections"].numpy(),
            )
        onnx_s = None
        if not args.skip_onnx:
            from rfcn_tf.export.onnx import export_onnx, onnx_session, run_onnx

            started = time.perf_counter()
            onnx_path = export_onnx(path, output_path=os.path.join(tmp, "model.onnx"))
            onnx_s = time.perf_counter() - started
            session = onnx_session(onnx_path, threads=args.threads)
            for b in sizes:
                add(
                    "onnxruntime CPU fp32 (same signature)",
                    b,
                    lambda b=b: run_onnx(session, image_batches[b]),
                )
            if args.int8:
                from rfcn_tf.export.onnx import quantize_onnx_int8

                crops = [
                    np.ascontiguousarray(np.roll(image, 37 * k, axis=1))[None] for k in range(4)
                ]
                int8_path = quantize_onnx_int8(
                    onnx_path, output_path=os.path.join(tmp, "int8.onnx"), calibration_images=crops
                )
                session8 = onnx_session(int8_path, threads=args.threads)
                for b in sizes:
                    add(
                        "onnxruntime CPU int8 (static, uint8 activations, Conv per channel)",
                        b,
                        lambda b=b: run_onnx(session8, image_batches[b]),
                    )
            import onnxruntime

            ort_version = onnxruntime.__version__
        rows = _time_interleaved(calls, runs=args.runs, warmup=args.warmup)

    print(
        f"TensorFlow {tf.__version__}"
        + (f", onnxruntime {ort_version}" if not args.skip_onnx else "")
        + f"; {os.cpu_count()} CPUs, {args.threads} intra-op threads; "
        f"median of {args.runs} calls after {args.warmup} warm-up calls, paths interleaved"
    )
    print(
        f"\n### Per-image latency, {cfg.model.backbone.name} (backbone_weights="
        f"{cfg.model.backbone.weights}{', checkpoint ' + args.checkpoint if args.checkpoint else ''}"
        f"), {num_classes} classes, {height}x{width} image, "
        f"{cfg.model.rpn.post_nms_top_n_test} RoIs, psroi_impl=tf\n"
    )
    print(
        "| path | median per call (ms) | min (ms) | images/s | vs the first in-Python row, same batch |"
    )
    print("|---|---|---|---|---|")
    base = {}
    for name, times in rows.items():
        batch = images_per_call[name]
        med = statistics.median(times)
        base.setdefault(batch, med)
        print(
            f"| {name} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | {batch / med:.2f} | "
            f"{med / base[batch]:.2f}x |"
        )
    print(
        f"\nExport (trace + save) took {export_s:.1f} s"
        + (f"; ONNX conversion {onnx_s:.1f} s." if onnx_s is not None else ".")
    )


if __name__ == "__main__":
    main()
