"""The public inference API: `load(path) -> Detector`, `Detector.predict(images) -> Detections`.

    import rfcn_tf
    detector = rfcn_tf.load("runs/shapes_tiny")   # run dir, checkpoint, SavedModel, model base
    result = detector.predict("photo.jpg")        # path, uint8 HxWx3 array, PIL image, or a list
    result.boxes, result.scores, result.class_ids, result.class_names

Boxes are float32 [N, 4] in pixels of the ORIGINAL image, `box_format` "xyxy" (x1, y1, x2, y2;
default), "yxyx" or "xywh" (x, y, width, height); class ids are 1..C as in the SavedModel.
Images are decoded by `rfcn_tf.images.read_image` (TF's decoder, EXIF orientation applied,
16-bit PNGs as training reads them); bad input raises `rfcn_tf.errors.InputError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rfcn_tf.errors import InputError
from rfcn_tf.images import _describe, read_image
from rfcn_tf.inference.backends import CheckpointBackend, SavedModelBackend, is_saved_model_path
from rfcn_tf.run_dir import class_names_for, resolve_config
from rfcn_tf.visualization import draw_boxes

__all__ = [
    "BOX_FORMATS",
    "Detections",
    "Detector",
    "convert_boxes",
    "load",
    "load_checkpoint",
    "load_saved_model",
]

BOX_FORMATS = ("xyxy", "yxyx", "xywh")
DEFAULT_SCORE_THRESHOLD = 0.5


def convert_boxes(boxes_yxyx: np.ndarray, box_format: str) -> np.ndarray:
    """float32 [N, 4] yxyx -> `box_format` ("xyxy", "yxyx" or "xywh")."""
    boxes = np.asarray(boxes_yxyx, np.float32).reshape(-1, 4)
    y1, x1, y2, x2 = boxes.T
    if box_format == "yxyx":
        return boxes.copy()
    if box_format == "xyxy":
        return np.stack([x1, y1, x2, y2], axis=1)
    if box_format == "xywh":
        return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    raise InputError(f"box_format={box_format!r}: choose one of {', '.join(BOX_FORMATS)}")


@dataclasses.dataclass
class Detections:
    """The detections of one image, by decreasing score.

    Attributes:
        boxes: float32 [N, 4] pixels of the original image, in `box_format`.
        scores: float32 [N].
        class_ids: int64 [N], 1..C.
        class_names: list of N names (`class_ids[i]` names `class_names[i]`).
        box_format: "xyxy", "yxyx" or "xywh".
        image_size: (height, width) of the original image.
        source: what the image was (its path, or a description of the array).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]
    box_format: str
    image_size: tuple[int, int]
    source: str = ""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def boxes_as(self, box_format: str) -> np.ndarray:
        """The boxes in another format."""
        yxyx = _to_yxyx(self.boxes, self.box_format)
        return convert_boxes(yxyx, box_format)

    def draw(self, image: Any) -> np.ndarray:
        """The image (anything `predict` takes) with these detections drawn: uint8 [H, W, 3]."""

        array = read_image(image)
        names = sorted(set(self.class_names), key=self.class_names.index)
        order = np.argsort(self.scores, kind="stable")  # best drawn last, on top
        # draw_boxes takes yxyx and classes 1..K of its own name list
        local = np.array([names.index(n) + 1 for n in self.class_names], np.int64)
        return draw_boxes(
            array,
            self.boxes_as("yxyx")[order],
            classes=local[order],
            class_names=names,
            scores=self.scores[order],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"image_size", "box_format", "detections": [{"box", "score",
        "class_id", "class_name"}]}."""
        return {
            "image_size": list(self.image_size),
            "box_format": self.box_format,
            "detections": [
                {
                    "box": [float(v) for v in self.boxes[i]],
                    "score": float(self.scores[i]),
                    "class_id": int(self.class_ids[i]),
                    "class_name": self.class_names[i],
                }
                for i in range(len(self))
            ],
        }


def _to_yxyx(boxes: np.ndarray, box_format: str) -> np.ndarray:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if box_format == "yxyx":
        return b.copy()
    if box_format == "xyxy":
        return b[:, [1, 0, 3, 2]]
    if box_format == "xywh":
        x, y, w, h = b.T
        return np.stack([y, x, y + h, x + w], axis=1)
    raise InputError(f"box_format={box_format!r}: choose one of {', '.join(BOX_FORMATS)}")


def _is_single(images: Any) -> bool:
    if isinstance(images, (str, os.PathLike, bytes, bytearray)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return not isinstance(images, (list, tuple))


class Detector:
    """A trained R-FCN detector on original images (checkpoint or SavedModel backend).

    Build it with `rfcn_tf.load(path)`.

    Attributes:
        class_names: the C class names (`class_names[i - 1]` names class id i).
        backend: "checkpoint" or "saved_model". path: the checkpoint prefix or SavedModel
        version folder loaded. score_threshold: the default of `predict`.
    """

    def __init__(
        self,
        backend,
        *,
        class_names: Sequence[str],
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        info: dict | None = None,
    ):
        self._backend = backend
        self.class_names = list(class_names)
        self.backend = backend.kind
        self.path = backend.path
        self.score_threshold = float(score_threshold)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return (
            f"Detector({self.backend} {self.path}, {len(self.class_names)} classes, "
            f"score_threshold={self.score_threshold:g})"
        )

    def predict(
        self,
        images: Any,
        *,
        batch_size: int = 8,
        score_threshold: float | None = None,
        box_format: str = "xyxy",
    ):
        """Detects objects.

        Args:
            images: one image (a path, encoded bytes, a uint8 [H, W, 3] NumPy array, a PIL
                image) or a list of them (any sizes).
            batch_size: images read and detected per step (the checkpoint backend runs the
                images of one padded size together; the SavedModel takes one per call).
            score_threshold: keep detections scoring at least this (None: the detector's
                `score_threshold`).
            box_format: "xyxy" (default), "yxyx" or "xywh", pixels of the original image.

        Returns:
            `Detections` for one image, a list of them for a list.

        Raises:
            InputError: an image that cannot be read (the message names it), a bad argument.
        """

        if box_format not in BOX_FORMATS:
            raise InputError(f"box_format={box_format!r}: choose one of {', '.join(BOX_FORMATS)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"score_threshold must be in [0, 1], got {threshold}")
        single = _is_single(images)
        items = [images] if single else list(images)
        results = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            arrays = [read_image(item) for item in chunk]
            for item, array, det in zip(chunk, arrays, self._backend.detect(arrays)):
                results.append(self._detections(item, array, det, threshold, box_format))
        return results[0] if single else results

    def _detections(self, item, array, det, threshold, box_format) -> Detections:

        keep = det["scores"] >= threshold
        classes = det["classes"][keep]
        bad = classes[(classes < 1) | (classes > len(self.class_names))]
        if bad.size:
            raise InputError(
                f"the model returned class id {int(bad[0])} outside 1.."
                f"{len(self.class_names)} (class names: {self.class_names})"
            )
        return Detections(
            boxes=convert_boxes(det["boxes"][keep], box_format),
            scores=det["scores"][keep].astype(np.float32),
            class_ids=classes,
            class_names=[self.class_names[int(c) - 1] for c in classes],
            box_format=box_format,
            image_size=(int(array.shape[0]), int(array.shape[1])),
            source=_describe(item),
        )


def load_saved_model(
    path: str | os.PathLike, *, score_threshold: float = DEFAULT_SCORE_THRESHOLD
) -> Detector:
    """A Detector over an exported SavedModel (version folder or model base)."""

    backend = SavedModelBackend(os.fspath(path))
    return Detector(
        backend,
        class_names=backend.class_names,
        score_threshold=score_threshold,
        info={"saved_model": backend.path},
    )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    config: str | None = None,
    overrides: Sequence[str] = (),
    cfg=None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    which: str = "best",
) -> Detector:
    """A Detector over a training checkpoint (run folder, checkpoint folder or prefix); the
    model is built from `cfg`, else `config` + `overrides`, else the run's config.yaml."""

    path = os.fspath(path)
    config_source = "given config"
    if cfg is None:
        cfg, config_source = resolve_config(config, overrides, checkpoint=path)
    class_names, names_from = class_names_for(cfg, path)
    backend = CheckpointBackend(
        cfg, path, class_names=class_names, names_from=names_from, which=which
    )
    return Detector(
        backend,
        class_names=class_names,
        score_threshold=score_threshold,
        info={"checkpoint": backend.prefix, "config": config_source},
    )


def load(
    path: str | os.PathLike,
    *,
    config: str | None = None,
    overrides: Sequence[str] = (),
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    which: str = "best",
) -> Detector:
    """Loads a trained detector.

    Args:
        path: a run folder (its best checkpoint when it kept one, else the latest), a folder
            of checkpoints, a checkpoint prefix (`.../checkpoints/ckpt-1500`), a SavedModel
            version folder (`export/rfcn/1`) or a model base (`export/rfcn`: latest version).
        config: checkpoints only: preset or YAML to build the model from (default: the run's
            config.yaml, found from `path`).
        overrides: checkpoints only: `key=value` config overrides.
        score_threshold: default threshold of `Detector.predict`.
        which: checkpoints in a run folder: "best" or "latest".

    Raises:
        InputError: nothing loadable at `path`. CheckpointError, ExportError: a model that
        cannot be loaded (message names the file).
    """

    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.isfile(path + ".index"):
        raise InputError(f"rfcn_tf.load({path!r}): no such file or folder")
    if is_saved_model_path(path):
        return load_saved_model(path, score_threshold=score_threshold)
    return load_checkpoint(
        path, config=config, overrides=overrides, score_threshold=score_threshold, which=which
    )
