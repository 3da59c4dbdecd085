"""Evaluate a trained R-FCN detector: ``python -m rfcn_tf.evaluate``.

Runs a checkpoint (or an exported SavedModel) over an evaluation split and reports COCO AP
(pycocotools), VOC07 11-point mAP and VOC2010+ mAP, overall and per class (R-FCN sec. 4 reports
VOC mAP@0.5 and COCO AP / AP@0.5). Writes ``metrics.json``, ``metrics.md``,
``pr_curves/*.png`` and ``detections.json`` (COCO results format) to ``--out``, shows a progress
bar on stderr and prints a one-line summary on stdout.

Examples::

    python -m rfcn_tf.evaluate --checkpoint runs/shapes_tiny/checkpoints
    python -m rfcn_tf.evaluate --config voc07_resnet101 --checkpoint runs/voc/checkpoints/ckpt-80000 \\
        --out runs/voc/eval_test --split test
    python -m rfcn_tf.evaluate --saved-model export/rfcn/1 --max-images 50
    python -m rfcn_tf.evaluate --config coco_resnet101 --checkpoint ... --multiscale

Model sources:
    --checkpoint  a training checkpoint prefix (``.../checkpoints/ckpt-1500``) or a folder of
                  checkpoints (the latest is used). The model is built from the config (the
                  run's saved ``config.yaml`` when --config is not given and the run folder has
                  one) and its weights restored; a checkpoint trained for another class count
                  than the dataset's is reported as such.
    --saved-model an export (``export/<name>/<version>``, or ``export/<name>`` for its latest
                  version) called through its ``serving_default`` signature (DESIGN.md "Export":
                  uint8 [1, H, W, 3] in, normalized yxyx boxes out), one image at a time; the
                  class names come from its ``labels.txt`` asset.

This module also holds the model-loading helpers the predict CLI shares
(`load_checkpoint_detector`, `SavedModelDetector`, `resolve_config`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from rfcn_tf.cli_args import add_config_arguments, add_model_source_arguments

__all__ = [
    "CLIError",
    "find_run_file",
    "resolve_config",
    "load_checkpoint_detector",
    "check_checkpoint_classes",
    "SavedModelDetector",
    "resolve_saved_model",
    "main",
]

RUN_CONFIG_NAME = "config.yaml"


class CLIError(RuntimeError):
    """A failure the CLIs report as one clear line (exit status 1) instead of a traceback."""


# --------------------------------------------------------------------------------------------
# Config


def find_run_file(checkpoint: str, name: str) -> str | None:
    """A file a training run saved beside its checkpoints (`config.yaml`, `classes.txt`).

    Looks in the checkpoint's folder and up to two parents (``<work_dir>/checkpoints/ckpt-N``
    -> ``<work_dir>/<name>``); None when absent.
    """
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    folder = os.path.abspath(folder or ".")
    for _ in range(3):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
        folder = os.path.dirname(folder)
    return None


def resolve_config(config: str | None, overrides: Sequence[str], *, checkpoint: str | None = None):
    """The config tree for a CLI run.

    Args:
        config: preset name or YAML path (`--config`); None: the run's saved `config.yaml` found
            near `checkpoint`, else the default preset.
        overrides: `--set key=value` strings, applied last.
        checkpoint: the `--checkpoint` argument, to find the run's config.

    Returns:
        `(Config, description)`: the tree and where it came from (for reports).
    """
    from rfcn_tf.config import load_config

    if config is None and checkpoint is not None:
        found = find_run_file(checkpoint, RUN_CONFIG_NAME)
        if found is not None:
            return load_config(found, overrides, old_layout="migrate"), found
    cfg = load_config(config, overrides)
    return cfg, config or "default preset"


# --------------------------------------------------------------------------------------------
# Checkpoints


def _class_maps_key(reader_shapes: dict[str, list[int]]) -> str | None:
    """The checkpoint key of the R-FCN head's classification score-map kernel (the model's own
    variable, not an optimizer slot of it), or None when the checkpoint has none."""
    import re

    # Keras 3 tracks a conv kernel as `_kernel`: model/rfcn_head/class_maps/_kernel/.ATTRIBUTES/...
    pattern = re.compile(r"(^|/)class_maps/_?kernel/\.ATTRIBUTES/VARIABLE_VALUE$")
    for key in sorted(reader_shapes):
        if pattern.search(key) and len(reader_shapes[key]) == 4:
            return key
    return None


def check_checkpoint_classes(prefix: str, *, num_classes: int, ps_k: int,
                             dataset_desc: str) -> None:
    """Raises CLIError when the checkpoint's classification maps fit another class count.

    Compares the last dimension of the head's class score-map kernel (k^2 (C' + 1) channels,
    R-FCN sec. 2) with the one the dataset's C needs, and the checkpoint's recorded
    `num_classes` counter when it has one; both are read from the checkpoint without
    restoring anything, so a mismatch never reaches TensorFlow's restore error.

    Args:
        prefix: checkpoint prefix (`ckpt-N`).
        num_classes: C of the dataset being evaluated.
        ps_k: k of the model config (to turn channels into a class count).
        dataset_desc: the dataset and split, for the message.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as exc:
        raise CLIError(f"cannot read checkpoint {prefix}: {exc}") from None
    shapes = reader.get_variable_to_shape_map()
    recorded = None
    key = "num_classes/.ATTRIBUTES/VARIABLE_VALUE"
    if key in shapes:
        recorded = int(reader.get_tensor(key))
    maps_key = _class_maps_key(shapes)
    channels = shapes[maps_key][-1] if maps_key else None
    expected = ps_k * ps_k * (num_classes + 1)
    if recorded is not None and recorded != num_classes:
        raise CLIError(
            f"checkpoint {prefix} was trained for {recorded} classes but {dataset_desc} has "
            f"{num_classes}: use the config of the dataset it was trained on (--config / "
            f"--set data.*)")
    if channels is not None and channels != expected:
        if channels % (ps_k * ps_k) == 0:
            theirs = f"{channels // (ps_k * ps_k) - 1} classes"
        else:
            theirs = f"another k (ps_k={ps_k} does not divide {channels})"
        raise CLIError(
            f"checkpoint {prefix} does not fit {dataset_desc}: its classification score maps "
            f"have {channels} channels ({theirs} + background at k={ps_k}) but "
            f"{num_classes} classes need {expected} = {ps_k}x{ps_k}x({num_classes}+1)")


def load_checkpoint_detector(cfg, checkpoint: str, *, num_classes: int, dataset_desc: str):
    """Builds the detector from `cfg.model` and restores a training checkpoint into it.

    Args:
        cfg: the config tree.
        checkpoint: prefix or folder (latest checkpoint).
        num_classes: C of the dataset.
        dataset_desc: the dataset and split, for error messages.

    Returns:
        `(model, prefix)`: the `RFCN` with restored weights and the checkpoint prefix used.

    Raises:
        CLIError: no checkpoint, a class-count mismatch (checked before restoring), or a
            restore failure (other architecture): one message, no traceback.
    """
    from rfcn_tf.engine.checkpoints import CheckpointError, resolve_checkpoint, restore_model_weights
    from rfcn_tf.model.builder import build_detector

    try:
        prefix = resolve_checkpoint(checkpoint, what="--checkpoint")
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    check_checkpoint_classes(prefix, num_classes=num_classes, ps_k=cfg.model.head.k,
                             dataset_desc=dataset_desc)
    model = build_detector(cfg.model, num_classes=num_classes)
    try:
        restore_model_weights(model, prefix, num_classes=num_classes, what="--checkpoint")
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    return model, prefix


# --------------------------------------------------------------------------------------------
# SavedModel


def resolve_saved_model(path: str) -> str:
    """An export version folder (`export/<name>/<version>`), or the model folder's latest version.

    Raises:
        CLIError: no `saved_model.pb` there nor in a numeric subfolder.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = [d for d in os.listdir(path) if d.isdigit()
                    and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
        if versions:
            return os.path.join(path, max(versions, key=int))
    raise CLIError(f"--saved-model {path}: no SavedModel there (expected saved_model.pb in it, "
                   f"or in a numeric version folder such as {os.path.join(path, '1')})")


class SavedModelDetector:
    """An exported detector called through its `serving_default` signature (DESIGN.md "Export").

    Args:
        path: version folder or model folder (latest version).

    Attributes:
        path: the version folder loaded.
        class_names: names from `assets/labels.txt` (line i names class i, 1-based).
    """

    def __init__(self, path: str):
        import tensorflow as tf

        self.path = resolve_saved_model(path)
        try:
            loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise CLIError(f"cannot load SavedModel {self.path}: {exc}") from None
        if "serving_default" not in loaded.signatures:
            raise CLIError(f"SavedModel {self.path} has no 'serving_default' signature "
                           f"(signatures: {sorted(loaded.signatures)})")
        self._loaded = loaded  # keeps the variables alive
        self._serve = loaded.signatures["serving_default"]
        labels = os.path.join(self.path, "assets", "labels.txt")
        if not os.path.isfile(labels):
            raise CLIError(f"SavedModel {self.path} has no assets/labels.txt (class names)")
        with open(labels, encoding="utf-8") as f:
            self.class_names = [line.rstrip("\n") for line in f if line.strip()]

    def detect_image(self, image) -> dict[str, Any]:
        """Detections of one image of any size.

        Args:
            image: uint8 `[H, W, 3]` RGB (tensor or array).

        Returns:
            NumPy `{"boxes": float64 [N, 4] yxyx pixels of `image`, "scores": [N],
            "classes": int64 [N] in 1..C}` (the N = num_detections real rows).
        """
        import numpy as np
        import tensorflow as tf

        image = tf.convert_to_tensor(image)
        height, width = int(image.shape[0]), int(image.shape[1])
        out = self._serve(input_tensor=image[None])
        n = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(out["detection_boxes"], np.float64)[0, :n]
        boxes = boxes * np.array([height, width, height, width], np.float64)
        return {
            "boxes": boxes,
            "scores": np.asarray(out["detection_scores"], np.float64)[0, :n],
            "classes": np.rint(np.asarray(out["detection_classes"])[0, :n]).astype(np.int64),
        }

    def detect_fn(self, max_detections: int = 100):
        """A batched `detect_fn(images, image_shapes)` (INTERFACES.md) over `detect_image`.

        The signature resizes each (h, w) image again with the export's own scale; boxes come
        back normalized and are scaled to the (h, w) frame the evaluator expects.
        """
        import numpy as np

        def detect(images, image_shapes):
            images = np.asarray(images)
            image_shapes = np.asarray(image_shapes)
            b = images.shape[0]
            boxes = np.zeros((b, max_detections, 4), np.float32)
            scores = np.zeros((b, max_detections), np.float32)
            classes = np.zeros((b, max_detections), np.int32)
            num = np.zeros((b,), np.int32)
            for i in range(b):
                h, w = (int(v) for v in image_shapes[i])
                det = self.detect_image(images[i, :h, :w])
                n = min(det["scores"].shape[0], max_detections)
                boxes[i, :n] = det["boxes"][:n]
                scores[i, :n] = det["scores"][:n]
                classes[i, :n] = det["classes"][:n]
                num[i] = n
            return {"detection_boxes": boxes, "detection_scores": scores,
                    "detection_classes": classes, "num_detections": num}

        return detect


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.evaluate",
        description=("Evaluate an R-FCN detector on a dataset split: COCO AP (pycocotools), "
                     "VOC07 11-point mAP and VOC2010+ mAP, overall and per class. Writes "
                     "metrics.json, metrics.md, pr_curves/*.png and detections.json (COCO "
                     "results) to --out and prints a one-line summary."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n"
                "  python -m rfcn_tf.evaluate --checkpoint runs/shapes_tiny/checkpoints\n"
                "  python -m rfcn_tf.evaluate --saved-model export/rfcn/1 --max-images 50\n"
                "  python -m rfcn_tf.evaluate --config voc07_resnet101 --set data.voc_root=VOC "
                "--checkpoint runs/voc/checkpoints --split test"))
    add_config_arguments(
        parser, set_example="eval.batch_size=2",
        config_help=("default: the run's saved config.yaml next to --checkpoint, else the "
                     "shapes_tiny preset"))
    add_model_source_arguments(parser)
    parser.add_argument(
        "--split", default=None,
        help="dataset split to evaluate; default: eval.split, else data.val_split")
    parser.add_argument(
        "--out", default=None, metavar="DIR",
        help="output folder for the reports; default: <train.work_dir>/eval/<split>")
    parser.add_argument(
        "--max-images", type=int, default=None, metavar="N",
        help="evaluate only the first N images of the split (default: eval.max_images, else all)")
    parser.add_argument(
        "--multiscale", action="store_true",
        help=("multi-scale testing (R-FCN sec. 4.2): run every shorter side in "
              "eval.multiscale_sizes and merge the detections by per-class NMS "
              "(--checkpoint only)"))
    parser.add_argument(
        "--no-progress", action="store_true",
        help="hide the progress bar (it is drawn on stderr)")
    return parser


def _dataset_desc(cfg, split: str) -> str:
    source = cfg.data.source
    if source == "tfds":
        source = f"tfds '{cfg.data.tfds_name}'"
    return f"the dataset ({source}, split '{split}')"


def _run(args: argparse.Namespace) -> dict:
    from rfcn_tf.data.pipeline import build_dataset, build_source
    from rfcn_tf.evaluation.evaluator import evaluate_detector, format_summary
    from rfcn_tf.evaluation.multiscale import multiscale_detect_fn

    if args.max_images is not None and args.max_images < 1:
        raise CLIError(f"--max-images must be >= 1, got {args.max_images}")
    if args.multiscale and args.saved_model:
        raise CLIError("--multiscale needs --checkpoint: an export runs one fixed test scale")
    cfg, config_source = resolve_config(args.config, args.overrides, checkpoint=args.checkpoint)
    split = args.split or cfg.eval.split or cfg.data.val_split
    max_images = args.max_images if args.max_images is not None else cfg.eval.max_images
    out_dir = args.out or os.path.join(cfg.train.work_dir, "eval", split)
    if cfg.eval.score_threshold is not None:
        cfg.model.postprocess.score_threshold = float(cfg.eval.score_threshold)

    multiscale = args.multiscale or cfg.eval.multiscale
    if multiscale and args.saved_model:
        raise CLIError("eval.multiscale needs --checkpoint: an export runs one fixed test scale")
    ms_max_size = None
    if multiscale:
        sizes = list(cfg.eval.multiscale_sizes)
        # Keep the config's aspect cap (max_size / shorter side) at the largest test size, and
        # feed the pipeline images at that size so each scale only downsamples.
        from rfcn_tf.data.pipeline import evaluation_scale

        ratio = cfg.data.max_size / float(evaluation_scale(cfg.data.scales))
        ms_max_size = max(int(round(max(sizes) * ratio)), max(sizes))
        cfg.data.scales = [max(sizes)]
        cfg.data.max_size = ms_max_size

    _, info = build_source(cfg.data, split=split)
    class_names = list(info.class_names)
    num_classes = len(class_names)
    desc = _dataset_desc(cfg, split)

    report_info: dict[str, Any] = {"config": config_source, "split": split}
    if args.checkpoint:
        model, prefix = load_checkpoint_detector(cfg, args.checkpoint, num_classes=num_classes,
                                                 dataset_desc=desc)
        report_info["checkpoint"] = prefix
        detect_fn = model.detect
        if multiscale:
            detect_fn = multiscale_detect_fn(
                model.detect, sizes=cfg.eval.multiscale_sizes, max_size=ms_max_size,
                size_multiple=cfg.model.backbone.feature_stride, nms_iou=cfg.model.postprocess.nms_iou,
                max_detections=cfg.model.postprocess.max_detections)
            report_info["multiscale_sizes"] = list(cfg.eval.multiscale_sizes)
    else:
        detector = SavedModelDetector(args.saved_model)
        if len(detector.class_names) != num_classes:
            raise CLIError(
                f"SavedModel {detector.path} has {len(detector.class_names)} classes "
                f"({', '.join(detector.class_names[:5])}{'...' if len(detector.class_names) > 5 else ''}) "
                f"but {desc} has {num_classes} ({', '.join(class_names[:5])}"
                f"{'...' if num_classes > 5 else ''})")
        report_info["saved_model"] = detector.path
        detect_fn = detector.detect_fn(cfg.model.postprocess.max_detections)

    dataset = build_dataset(cfg.data, split=split, training=False,
                            batch_size=cfg.eval.batch_size)
    metrics = evaluate_detector(
        detect_fn, dataset, class_names=class_names, category_ids=info.category_ids,
        out_dir=out_dir, max_images=max_images, progress=not args.no_progress,
        score_threshold=cfg.eval.score_threshold, num_images=info.num_examples,
        info=report_info)
    print(f"{format_summary(metrics)} -> {out_dir}", flush=True)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with a one-line message)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rfcn_tf.config import ConfigError
    from rfcn_tf.data.errors import DataError

    try:
        _run(args)
    except (CLIError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the message names the culprit; the traceback would bury it
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("RFCN_TRACEBACK"):
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
