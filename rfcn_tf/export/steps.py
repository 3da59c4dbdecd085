"""The export CLI's library steps: config, class names, the restored model, ONNX check images.

``python -m rfcn_tf.export`` (``rfcn_tf/export/__main__.py``) calls these in order; they read the
run folder through ``rfcn_tf.run_dir`` and restore through ``rfcn_tf.inference.backends``, as
evaluate and predict do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rfcn_tf.run_dir import class_names_for, find_checkpoint
from rfcn_tf.run_dir import resolve_config as _resolve_config


def resolve_config(
    config: str | None, overrides: Sequence[str], *, checkpoint: str | None
) -> tuple[Any, str]:
    """The config (``--config``, else the run's config.yaml beside the checkpoint, else the
    default preset) with ``overrides``; returns (config, where it came from)."""
    return _resolve_config(config, overrides, checkpoint=checkpoint)


def class_names(config: Any, checkpoint: str) -> tuple[list[str], str]:
    """Names of classes 1..C and where they came from: ``data.class_names``, else the
    ``classes.txt`` training wrote in the run folder, else the dataset source's. Fails first,
    naming the path, when ``checkpoint`` holds no checkpoint."""
    find_checkpoint(checkpoint, what="--checkpoint")
    return class_names_for(config, checkpoint)


def load_model(config: Any, checkpoint: str, *, num_classes: int) -> tuple[Any, str]:
    """The detector of ``config.model`` with a training checkpoint's weights (run folder,
    checkpoint folder or prefix; the class count is checked before restoring); returns
    (model, the checkpoint prefix restored)."""
    from rfcn_tf.inference.backends import load_checkpoint_model

    return load_checkpoint_model(
        config, checkpoint, num_classes=num_classes, dataset_desc=f"the {num_classes}-class export"
    )


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
