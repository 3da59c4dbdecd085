"""The export CLI's library steps: config, class names, the restored model, ONNX check images.

``python -m rfcn_tf.export`` (``rfcn_tf/export/__main__.py``) calls these in order; they read the
run folder the way evaluate and predict do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def resolve_config(config: str | None, overrides: Sequence[str], *,
                   checkpoint: str | None) -> tuple[Any, str]:
    """The config (``--config``, else the run's config.yaml beside the checkpoint, else
    shapes_tiny) with ``overrides``; returns (config, where it came from)."""
    from rfcn_tf.evaluate import resolve_config as resolve

    return resolve(config, overrides, checkpoint=checkpoint)


def class_names(config: Any, checkpoint: str) -> tuple[list[str], str]:
    """Names of classes 1..C and where they came from: ``data.class_names``, else the
    ``classes.txt`` training wrote beside its checkpoints, else the dataset source's."""
    from rfcn_tf.engine.checkpoints import resolve_checkpoint
    from rfcn_tf.evaluate import find_run_file

    resolve_checkpoint(checkpoint, what="--checkpoint")  # names the path when nothing is there
    if config.data.class_names:
        return list(config.data.class_names), "data.class_names"
    saved = find_run_file(checkpoint, "classes.txt")
    if saved is not None:
        names = [line.strip() for line in Path(saved).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        if names:
            return names, saved
    from rfcn_tf.data.pipeline import build_source

    _, info = build_source(config.data, split=config.data.val_split)
    return list(info.class_names), f"the {config.data.source} dataset"


def load_model(config: Any, checkpoint: str, *, num_classes: int) -> tuple[Any, str]:
    """The detector of ``config.model`` with a training checkpoint's weights (prefix or
    folder; the class count is checked before restoring); returns (model, what was restored)."""
    from rfcn_tf.evaluate import load_checkpoint_detector

    return load_checkpoint_detector(config, checkpoint, num_classes=num_classes,
                                    dataset_desc=f"the {num_classes}-class export")


def onnx_check_images(config: Any, count: int = 2) -> tuple[list | None, str]:
    """A few validation images (uint8 [1, H, W, 3]) for the ONNX check and their description;
    (None, why) when the dataset cannot be read here (the check then uses generated images)."""
    try:
        from rfcn_tf.data.pipeline import build_source

        examples, _ = build_source(config.data, split=config.data.val_split)
        images = [example["image"].numpy()[None] for example in examples.take(count)]
    except Exception as exc:  # the dataset is optional for exporting
        return None, f"generated images (dataset unreadable: {type(exc).__name__})"
    if not images:
        return None, "generated images (empty validation split)"
    return images, f"{len(images)} {config.data.val_split} images"
