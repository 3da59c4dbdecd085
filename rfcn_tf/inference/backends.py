"""The two model backends behind `Detector`: a training checkpoint and an exported SavedModel.

Both take original images (uint8 [H, W, 3], any sizes) and return per-image NumPy detections
in ORIGINAL-image pixels: `{"boxes": float32 [N, 4] yxyx, "scores": float32 [N],
"classes": int64 [N] in 1..C}` (N = the real detections, by decreasing score).

- `CheckpointBackend`: the model built from the run's config, weights restored from a
  checkpoint; images go through `rfcn_tf.inference.preprocess.detect_images` (the evaluation
  resize: shorter side `evaluation_scale(data.scales)`, longer side <= `data.max_size`).
- `SavedModelBackend`: the export's `serving_default` signature (which runs the same
  preprocessing inside its graph); its normalized boxes are scaled by the original size.

The same image gives the same boxes through both (to float32 rounding, 1e-3 px).
Also here: `load_checkpoint_model` (evaluate, predict, export load checkpoints through it),
`check_checkpoint_classes` and `resolve_saved_model`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from rfcn_tf.data.pipeline import evaluation_scale
from rfcn_tf.engine import checkpoints as ckpt_lib
from rfcn_tf.errors import CheckpointError, ExportError, InputError
from rfcn_tf.inference.preprocess import boxes_to_original, pad_batch, preprocess
from rfcn_tf.model.builder import build_detector
from rfcn_tf.run_dir import broken_checkpoint_file, find_checkpoint

__all__ = [
    "CheckpointBackend",
    "SavedModelBackend",
    "check_checkpoint_classes",
    "is_saved_model_path",
    "load_checkpoint_model",
    "resolve_saved_model",
]

LABELS_FILENAME = "labels.txt"


# --------------------------------------------------------------------------------------------
# Checkpoints


def _class_maps_key(reader_shapes: dict[str, list[int]]) -> str | None:
    """The checkpoint key of the R-FCN head's classification score-map kernel (the model's own
    variable, not an optimizer slot of it), or None when the checkpoint has none."""
    # Keras 3 tracks a conv kernel as `_kernel`: model/rfcn_head/class_maps/_kernel/.ATTRIBUTES/...
    pattern = re.compile(r"(^|/)class_maps/_?kernel/\.ATTRIBUTES/VARIABLE_VALUE$")
    for key in sorted(reader_shapes):
        if pattern.search(key) and len(reader_shapes[key]) == 4:
            return key
    return None


def _unreadable(prefix: str, exc: BaseException) -> CheckpointError:

    broken = broken_checkpoint_file(prefix) or f"{prefix}.index / {prefix}.data-*"
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
    return CheckpointError(
        f"cannot read checkpoint {prefix}: file {broken} is truncated or corrupt ({detail})"
    )


def check_checkpoint_classes(
    prefix: str, *, num_classes: int, ps_k: int, dataset_desc: str
) -> None:
    """Raises CheckpointError when the checkpoint's classification maps fit another class count.

    Compares the last dimension of the head's class score-map kernel (k^2 (C' + 1) channels,
    R-FCN sec. 2) with the one C needs, and the checkpoint's recorded `num_classes` counter
    when it has one; both are read without restoring anything, so a mismatch never reaches
    TensorFlow's restore error.

    Args:
        prefix: checkpoint prefix (`ckpt-N`).
        num_classes: C of the dataset / class names.
        ps_k: k of the model config (to turn channels into a class count).
        dataset_desc: where C comes from, for the message.
    """

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError, IndexError) as exc:
        raise _unreadable(prefix, exc) from None
    shapes = reader.get_variable_to_shape_map()
    recorded = None
    key = "num_classes/.ATTRIBUTES/VARIABLE_VALUE"
    if key in shapes:
        try:
            recorded = int(reader.get_tensor(key))
        except (tf.errors.OpError, ValueError, IndexError) as exc:
            raise _unreadable(prefix, exc) from None
    maps_key = _class_maps_key(shapes)
    channels = shapes[maps_key][-1] if maps_key else None
    expected = ps_k * ps_k * (num_classes + 1)
    if recorded is not None and recorded != num_classes:
        raise CheckpointError(
            f"checkpoint {prefix} was trained for {recorded} classes but {dataset_desc} has "
            f"{num_classes}: use the config of the dataset it was trained on (--config / "
            f"--set data.*)"
        )
    if channels is not None and channels != expected:
        if channels % (ps_k * ps_k) == 0:
            theirs = f"{channels // (ps_k * ps_k) - 1} classes"
        else:
            theirs = f"another k (ps_k={ps_k} does not divide {channels})"
        raise CheckpointError(
            f"checkpoint {prefix} does not fit {dataset_desc}: its classification score maps "
            f"have {channels} channels ({theirs} + background at k={ps_k}) but "
            f"{num_classes} classes need {expected} = {ps_k}x{ps_k}x({num_classes}+1)"
        )


def load_checkpoint_model(
    cfg, checkpoint: str, *, num_classes: int, dataset_desc: str, which: str = "best"
):
    """Builds the detector from `cfg.model` and restores a training checkpoint into it.

    Args:
        cfg: the config tree.
        checkpoint: run folder, checkpoint folder or prefix (`rfcn_tf.run_dir.find_checkpoint`).
        num_classes: C.
        dataset_desc: where C comes from, for error messages.
        which: "best" or "latest" for a run folder.

    Returns:
        `(model, prefix)`: the `RFCN` with restored weights and the checkpoint prefix used.

    Raises:
        CheckpointError: no checkpoint, a truncated file (named), a class-count mismatch
            (checked before restoring), or a restore failure (other architecture); TF's
            restore warnings are silenced so the error is the last thing printed.
    """

    prefix = find_checkpoint(checkpoint, which=which)
    check_checkpoint_classes(
        prefix, num_classes=num_classes, ps_k=cfg.model.head.k, dataset_desc=dataset_desc
    )
    model = build_detector(cfg.model, num_classes=num_classes)
    try:
        ckpt_lib.restore_model_weights(model, prefix, num_classes=num_classes, what="--checkpoint")
    except ckpt_lib.CheckpointError as exc:
        ckpt_lib.silence_restore_warnings()
        if "cannot read checkpoint" in str(exc):
            raise _unreadable(prefix, exc.__cause__ or exc) from None
        raise CheckpointError(str(exc)) from None
    except IndexError as exc:  # a truncated data file ("Read less bytes than requested")
        ckpt_lib.silence_restore_warnings()
        raise _unreadable(prefix, exc) from None
    return model, prefix


class CheckpointBackend:
    """A restored checkpoint on original images (module docstring).

    Args:
        cfg: the config tree (model, `data.scales`, `data.max_size`).
        checkpoint: run folder, checkpoint folder or prefix.
        class_names: the C class names (C sizes the model).
        names_from: where the names came from, for messages.

    Attributes:
        model, prefix, min_size, max_size, size_multiple, class_names.
    """

    kind = "checkpoint"

    def __init__(
        self,
        cfg,
        checkpoint: str,
        *,
        class_names: Sequence[str],
        names_from: str = "the class names",
        which: str = "best",
    ):

        self.class_names = list(class_names)
        self.model, self.prefix = load_checkpoint_model(
            cfg, checkpoint, num_classes=len(self.class_names), dataset_desc=names_from, which=which
        )
        self.path = self.prefix
        self.min_size = int(evaluation_scale(cfg.data.scales))
        self.max_size = int(cfg.data.max_size)
        self.size_multiple = int(cfg.model.backbone.feature_stride)

    def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections of original uint8 [H, W, 3] images.

        Images whose padded size is the same share one model call; others are separate calls,
        because a larger zero padding changes the RPN's proposals near the border (anchors
        over the padding are clipped to the image), so an image gets the detections it gets
        alone (and through the SavedModel, which takes one image per call).
        """

        prepared = [
            preprocess(
                image,
                min_size=self.min_size,
                max_size=self.max_size,
                size_multiple=self.size_multiple,
            )
            for image in images
        ]
        groups: dict[tuple, list[int]] = {}
        for i, (padded, _) in enumerate(prepared):
            groups.setdefault(tuple(padded.shape.as_list()), []).append(i)
        results: list[dict[str, np.ndarray]] = [{} for _ in images]
        for members in groups.values():
            batch, shapes = pad_batch(
                [prepared[i][0] for i in members],
                size_multiple=self.size_multiple,
                image_shapes=[prepared[i][1] for i in members],
            )
            out = dict(self.model.detect(batch, shapes))
            original = [np.asarray(images[i]).shape[:2] for i in members]
            out["detection_boxes"] = boxes_to_original(out["detection_boxes"], shapes, original)
            for i, det in zip(members, _split(out)):
                results[i] = det
        return results


def _split(out) -> list[dict[str, np.ndarray]]:
    boxes = np.asarray(out["detection_boxes"], np.float32)
    scores = np.asarray(out["detection_scores"], np.float32)
    classes = np.rint(np.asarray(out["detection_classes"])).astype(np.int64)
    num = np.rint(np.asarray(out["num_detections"])).astype(np.int64).reshape(-1)
    return [
        {"boxes": boxes[i, :n], "scores": scores[i, :n], "classes": classes[i, :n]}
        for i, n in enumerate(num)
    ]


# --------------------------------------------------------------------------------------------
# SavedModel


def is_saved_model_path(path: str) -> bool:
    """True for a SavedModel version folder or a model base with numeric version folders."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return True
    return os.path.isdir(path) and any(
        d.isdigit() and os.path.isfile(os.path.join(path, d, "saved_model.pb"))
        for d in os.listdir(path)
    )


def resolve_saved_model(path: str) -> str:
    """An export version folder (`export/<name>/<version>`), or the model base's latest version.

    Raises:
        InputError: no `saved_model.pb` there nor in a numeric subfolder.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = [
            d
            for d in os.listdir(path)
            if d.isdigit() and os.path.isfile(os.path.join(path, d, "saved_model.pb"))
        ]
        if versions:
            return os.path.join(path, max(versions, key=int))
    raise InputError(
        f"--saved-model {path}: no SavedModel there (expected saved_model.pb in "
        f"it, or in a numeric version folder such as {os.path.join(path, '1')})"
    )


class SavedModelBackend:
    """An export called through its `serving_default` signature, one image per call.

    Args:
        path: version folder or model base (latest version).

    Attributes:
        path: the version folder loaded. class_names: from `assets/labels.txt` (line i names
        class i, 1-based).
    """

    kind = "saved_model"

    def __init__(self, path: str):

        self.path = resolve_saved_model(path)
        try:
            loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, IndexError, tf.errors.OpError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
            raise ExportError(f"cannot load SavedModel {self.path}: {detail}") from None
        if "serving_default" not in loaded.signatures:
            raise ExportError(
                f"SavedModel {self.path} has no 'serving_default' signature "
                f"(signatures: {sorted(loaded.signatures)})"
            )
        self._loaded = loaded  # keeps the variables alive
        self._serve = loaded.signatures["serving_default"]
        labels = os.path.join(self.path, "assets", LABELS_FILENAME)
        if not os.path.isfile(labels):
            raise ExportError(
                f"SavedModel {self.path} has no assets/{LABELS_FILENAME} (class names)"
            )
        with open(labels, encoding="utf-8") as f:
            self.class_names = [line.rstrip("\n") for line in f if line.strip()]

    def detect_one(self, image) -> dict[str, np.ndarray]:
        """Detections of one original uint8 [H, W, 3] image (boxes yxyx original pixels)."""

        image = tf.convert_to_tensor(image)
        height, width = int(image.shape[0]), int(image.shape[1])
        out = self._serve(input_tensor=image[None])
        n = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(out["detection_boxes"], np.float32)[0, :n]
        boxes = boxes * np.array([height, width, height, width], np.float32)
        return {
            "boxes": boxes,
            "scores": np.asarray(out["detection_scores"], np.float32)[0, :n],
            "classes": np.rint(np.asarray(out["detection_classes"])[0, :n]).astype(np.int64),
        }

    def detect(self, images: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        return [self.detect_one(image) for image in images]

    def detect_fn(self, max_detections: int = 100):
        """A batched `detect_fn(images, image_shapes)` (the evaluator's) over `detect_one`.

        The signature resizes each (h, w) image again with the export's own scale; boxes come
        back scaled to the (h, w) frame the evaluator expects.
        """

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
                det = self.detect_one(images[i, :h, :w])
                n = min(det["scores"].shape[0], max_detections)
                boxes[i, :n] = det["boxes"][:n]
                scores[i, :n] = det["scores"][:n]
                classes[i, :n] = det["classes"][:n]
                num[i] = n
            return {
                "detection_boxes": boxes,
                "detection_scores": scores,
                "detection_classes": classes,
                "num_detections": num,
            }

        return detect


class OnnxBackend(SavedModelBackend):
    """An ONNX export (``--onnx``: model.onnx, or ``--int8``'s model_int8.onnx) run by
    onnxruntime on the CPU, one image per call.

    The converted graph is `serving_default` itself (uint8 [1, h, w, 3] in, the export's own
    resize inside, boxes normalized out), so `detect` and `detect_fn` (the evaluator's
    batched form) are the SavedModel backend's; only the call differs.

    Args:
        path: the .onnx file.
        class_names: the export's class names (ONNX files carry none; the SavedModel's
            ``assets/labels.txt`` is beside the fp32 model's version folder). Default: none.
        threads: onnxruntime intra-op threads (None: its default).
    """

    kind = "onnx"

    def __init__(self, path: str, *, class_names: Sequence[str] = (), threads: int | None = None):
        from rfcn_tf.export.onnx import onnx_session

        self.path = str(path)
        self.class_names = list(class_names)
        self._session = onnx_session(self.path, threads=threads)

    def detect_one(self, image) -> dict[str, np.ndarray]:
        """Detections of one original uint8 [H, W, 3] image (boxes yxyx original pixels)."""
        from rfcn_tf.export.onnx import run_onnx

        image = np.asarray(image, np.uint8)
        height, width = image.shape[:2]
        out = run_onnx(self._session, image[None])
        n = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(out["detection_boxes"], np.float32)[0, :n]
        return {
            "boxes": boxes * np.array([height, width, height, width], np.float32),
            "scores": np.asarray(out["detection_scores"], np.float32)[0, :n],
            "classes": np.rint(np.asarray(out["detection_classes"])[0, :n]).astype(np.int64),
        }
