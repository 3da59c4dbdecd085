"""Training checkpoints: what they hold, resuming, and loading initial weights with clear errors.

A training checkpoint (``<work_dir>/checkpoints/ckpt-<step>``) is a ``tf.train.Checkpoint`` of

- ``model``: every model variable (weights and BatchNorm statistics);
- ``optimizer``: the current stage's optimizer (momentum slots, iteration count, which drives
  the learning-rate schedule);
- ``step``: completed global steps (int64); ``stage``: index of the scheme's stage the
  checkpoint was taken in (int64; 0 for joint training);
- ``num_classes``: the model's class count C (int64), checked before any weight is touched.

Rerunning the same command finds the latest checkpoint in the folder and resumes from it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import keras
import tensorflow as tf

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "check_num_classes",
    "checkpoint_exists",
    "read_checkpoint_meta",
    "resolve_checkpoint",
    "restore_model_weights",
    "snapshot_prefix",
]

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model being trained."""


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """The counters of a training checkpoint (None where the checkpoint lacks them)."""

    path: str
    step: Optional[int]
    stage: Optional[int]
    num_classes: Optional[int]


def resolve_checkpoint(path: str, *, what: str) -> str:
    """A checkpoint prefix (``.../ckpt-1500``) or a folder holding checkpoints -> the prefix.

    Args:
      path: prefix or folder (the folder's latest checkpoint is used).
      what: how the user named it, for the error (``"train.init_checkpoint"``).

    Raises:
      CheckpointError: nothing checkpoint-like at ``path``.
    """
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{what}={path}: the folder holds no checkpoint "
                                  f"(no 'checkpoint' state file with a ckpt-N entry)")
        return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise CheckpointError(f"{what}={path}: no checkpoint there (expected a prefix such as "
                          f"runs/x/checkpoints/ckpt-1500, with a .index file, or a folder "
                          f"holding checkpoints)")


def read_checkpoint_meta(path: str) -> CheckpointMeta:
    """Reads ``step``, ``stage`` and ``num_classes`` of a checkpoint without building anything.

    Raises:
      CheckpointError: the checkpoint cannot be read (truncated or not a TF checkpoint).
    """
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    names = reader.get_variable_to_shape_map()

    def value(key: str) -> Optional[int]:
        full = key + _VALUE
        return int(reader.get_tensor(full)) if full in names else None

    return CheckpointMeta(path=path, step=value("step"), stage=value("stage"),
                          num_classes=value("num_classes"))


def check_num_classes(meta: CheckpointMeta, num_classes: int, *, what: str) -> None:
    """Raises CheckpointError when the checkpoint was trained for another class count."""
    if meta.num_classes is not None and meta.num_classes != num_classes:
        raise CheckpointError(
            f"{what} {meta.path} was trained with {meta.num_classes} classes but this model has "
            f"{num_classes} (the class-dependent layers cannot be restored); use a checkpoint of "
            f"the same dataset, or a new --work-dir to train from scratch")


def restore_model_weights(model: keras.Model, path: str, *, num_classes: int,
                          what: str = "train.init_checkpoint") -> CheckpointMeta:
    """Loads only the model's variables from a training checkpoint (fine-tuning, evaluation).

    Every variable of ``model`` must be found in the checkpoint with the same shape; the
    checkpoint may hold more (optimizer slots, counters), which are ignored.

    Args:
      model: the built model (its variables exist).
      path: checkpoint prefix or folder (``resolve_checkpoint``).
      num_classes: C of ``model``; compared with the checkpoint's before restoring.
      what: how the user named the checkpoint, for messages.

    Returns:
      The checkpoint's :class:`CheckpointMeta`.

    Raises:
      CheckpointError: missing checkpoint, another class count, a variable missing or of
        another shape (the message names the variable when TensorFlow does).
    """
    prefix = resolve_checkpoint(path, what=what)
    meta = read_checkpoint_meta(prefix)
    check_num_classes(meta, num_classes, what=what)
    try:
        status = tf.train.Checkpoint(model=model).restore(prefix)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        detail = str(exc)
        if len(detail) > 1500:
            detail = detail[:1500] + " ..."
        raise CheckpointError(f"{what} {prefix} does not fit this model (different architecture "
                              f"or class count?): {detail}") from exc
    return meta


def checkpoint_exists(prefix: str) -> bool:
    return tf.io.gfile.exists(prefix + ".index")


def snapshot_prefix(checkpoint_dir: str, name: str) -> str:
    """Path of a named model-only snapshot inside the checkpoint folder."""
    return os.path.join(checkpoint_dir, name, "model")
