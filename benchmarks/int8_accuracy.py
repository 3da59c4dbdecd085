"""Accuracy and speed of an export's three serving paths on the run's validation split.

Evaluates, on the whole split the run validates on (``eval.split``, else ``data.val_split``;
for BCCD that is ``test``) with the project's evaluator (VOC07 11-point and VOC2010+ all-point
mAP@0.5, COCO AP50 and AP), through ``rfcn_tf.export.accuracy.compare_accuracy`` (what the export
CLI's ``--int8`` reports on ``--int8-eval-images`` images):

  1. the SavedModel's ``serving_default`` (TensorFlow);
  2. onnxruntime on ``<export>_onnx/<version>/model.onnx`` (fp32);
  3. onnxruntime on ``model_int8.onnx`` beside it (``--int8`` of the export CLI);

then times fp32 against int8 onnxruntime on one validation image (medians of ``--runs``
interleaved calls). Every path gets the same resized (h, w) images (the split is read once);
``rfcn_tf.inference.backends.OnnxBackend`` scales the normalized boxes to that frame.

    python benchmarks/int8_accuracy.py [--run runs/shapes_tiny]   # exports into a temp dir
    python -m rfcn_tf.export --checkpoint runs/x/checkpoints --out /tmp/x/rfcn --onnx --int8
    python benchmarks/int8_accuracy.py --run runs/x --export /tmp/x/rfcn

Without ``--export`` it runs that export itself (``rfcn_tf.export.steps.export_checkpoint``,
``--onnx --int8``, no fresh-process check) into a temporary folder; without a trained run
it says so and does nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        default="runs/shapes_tiny",
        help="the training run folder (config.yaml, checkpoints/); default: the default training's",
    )
    parser.add_argument(
        "--export",
        default=None,
        help="the export CLI's --out of an --onnx --int8 export (model base: <out>/<version>); "
        "default: export the run's latest checkpoint into a temporary folder",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed calls per onnxruntime model")
    return parser.parse_args()


def main() -> int:
    args = _parse()
    if not os.path.isfile(os.path.join(args.run, "config.yaml")):
        print(f"no trained run at {args.run} (train first: python -m rfcn_tf.train); skipped")
        return 0
    if args.export is not None:
        report(args.run, args.export, runs=args.runs)
        return 0
    import tempfile

    from rfcn_tf.export.steps import export_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rfcn")
        export_checkpoint(
            os.path.join(args.run, "checkpoints"), out=out, verify=False, onnx=True, int8=True
        )
        report(args.run, out, runs=args.runs)
    return 0


def report(run: str, export: str, *, runs: int) -> None:
    """Prints the accuracy table of the three paths and the fp32/int8 onnxruntime speed."""
    import numpy as np

    from rfcn_tf.config import load_config
    from rfcn_tf.data.pipeline import build_dataset
    from rfcn_tf.export.accuracy import compare_accuracy
    from rfcn_tf.export.onnx import onnx_session, run_onnx

    versions = [v for v in os.listdir(export) if v.isdigit()]
    if not versions:
        raise SystemExit(f"{export} holds no numbered version")
    version = max(versions, key=int)
    onnx_dir = os.path.join(export + "_onnx", version)
    cfg = load_config(os.path.join(run, "config.yaml"), [])
    split = cfg.eval.split or cfg.data.val_split
    paths = {"fp32": os.path.join(onnx_dir, "model.onnx")}
    paths["int8"] = os.path.join(onnx_dir, "model_int8.onnx")
    # The export CLI's --int8 report, on the whole split (same images for the three paths).
    metrics = compare_accuracy(
        cfg, os.path.join(export, version), paths["fp32"], paths["int8"], split=split
    )
    names = {
        "TF": "TF SavedModel `serving_default`",
        "ORT fp32": "onnxruntime fp32",
        "int8": "onnxruntime int8",
    }
    print(f"run {run}, export {export}/{version}, split {split!r}\n")
    print("| path | mAP@0.5 VOC07 | mAP@0.5 VOC2010+ | COCO AP50 | COCO AP | images |")
    print("|---|---|---|---|---|---|")
    for key, m in metrics.items():
        print(
            f"| {names[key]} | {m['voc07']['mAP']:.4f} | {m['voc2010']['mAP']:.4f} | "
            f"{m['coco']['AP50']:.4f} | {m['coco']['AP']:.4f} | {m['num_images']} |",
            flush=True,
        )
    sessions = {name: onnx_session(path) for name, path in paths.items()}
    fp32, int8 = metrics["ORT fp32"], metrics["int8"]
    print(
        "\nint8 - fp32, points: "
        f"VOC07 {100 * (int8['voc07']['mAP'] - fp32['voc07']['mAP']):+.2f}, "
        f"VOC2010+ {100 * (int8['voc2010']['mAP'] - fp32['voc2010']['mAP']):+.2f}, "
        f"AP50 {100 * (int8['coco']['AP50'] - fp32['coco']['AP50']):+.2f}, "
        f"AP {100 * (int8['coco']['AP'] - fp32['coco']['AP']):+.2f}"
    )

    features = next(iter(build_dataset(cfg.data, split=split, training=False, batch_size=1)))
    h, w = (int(v) for v in np.asarray(features["image_shapes"])[0])
    image = np.asarray(features["images"])[0, :h, :w][None]
    for session in sessions.values():
        for _ in range(3):  # warm-up
            run_onnx(session, image)
    seconds = {name: [] for name in sessions}
    for _ in range(runs):  # interleaved: load from other processes falls on both
        for name, session in sessions.items():
            started = time.perf_counter()
            run_onnx(session, image)
            seconds[name].append(time.perf_counter() - started)
    med = {name: statistics.median(times) for name, times in seconds.items()}
    print(
        f"onnxruntime at {h}x{w}, median of {runs} interleaved calls: fp32 "
        f"{med['fp32'] * 1e3:.1f} ms, int8 {med['int8'] * 1e3:.1f} ms, int8 "
        f"{med['fp32'] / med['int8']:.2f}x fp32's speed"
    )


if __name__ == "__main__":
    sys.exit(main())
