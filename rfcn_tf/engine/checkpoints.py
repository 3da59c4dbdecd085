"""Training checkpoints: what they hold, resuming, and loading initial weights with clear errors.

A training checkpoint (``<work_dir>/checkpoints/ckpt-<step>``) is a ``tf.train.Checkpoint`` of

- ``model``: every model variable (weights and BatchNorm statistics);
- ``optimizer``: the current stage's optimizer (momentum slots, iteration count, which drives
  the learning-rate schedule);
- ``step``: completed global steps (int64); ``stage``: index of the scheme's stage the
  checkpoint was taken in (int64; 0 for joint training);
- ``num_classes``: the model's class count C (int64), checked before any weight is touched.

Rerunning the same command finds the latest checkpoint in the folder and resumes from it
(``find_resume_checkpoint``): a checkpoint that cannot be read back (truncated by a full disk or
a copy cut short) is passed over with a warning naming it, and training resumes from the newest
intact one. ``save_checkpoint`` turns a failed save (disk full) into one ``CheckpointError``
naming the path, removes what the failed save left (``ckpt-<step>_temp/``, partial files) and
keeps the previous checkpoint; stale ``*_temp`` folders of a crashed run are removed on the next
run. A restore that fails (another architecture) leaves TensorFlow's "value in checkpoint could
not be found" warnings silenced, so the error is the last thing on screen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import logging
import os
import re
import shutil
from collections.abc import Iterator

import keras
import tensorflow as tf

from rfcn_tf.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "check_num_classes",
    "checkpoint_exists",
    "find_resume_checkpoint",
    "quiet_failed_restore",
    "read_checkpoint_meta",
    "remove_stale_temp",
    "resolve_checkpoint",
    "restore_model_weights",
    "save_checkpoint",
    "silence_restore_warnings",
    "snapshot_prefix",
    "verify_checkpoint",
]

logger = logging.getLogger("rfcn_tf.engine")

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"

# Errors TensorFlow raises reading a damaged checkpoint: a truncated data file gives
# IndexError("Read less bytes than requested"), a truncated index an OpError.
_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, OSError)

# The warnings TensorFlow logs (often at exit, when the restore's bookkeeping is garbage
# collected) after a restore that did not match: dozens of lines after our one-line error.
_RESTORE_WARNINGS = (
    "Value in checkpoint could not be found",
    "Unresolved object in checkpoint",
    "not all checkpointed values were used",
    "checkpoint is being deleted with unrestored values",
    "being deleted with unrestored values",
    "expect_partial()",
)


class _DropRestoreWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _RESTORE_WARNINGS)


_DROP_RESTORE_WARNINGS = _DropRestoreWarnings()


def silence_restore_warnings() -> None:
    """Silences TensorFlow's unmatched-value warnings of a failed restore for the rest of the
    process: they are logged when the restore's bookkeeping is garbage collected, which may be
    after the one-line error has been printed. Call it when a restore failed."""
    tf.get_logger().addFilter(_DROP_RESTORE_WARNINGS)


@contextlib.contextmanager
def quiet_failed_restore() -> Iterator[None]:
    """Runs a restore; if it raises, ``silence_restore_warnings()`` before the error leaves."""
    try:
        yield
    except BaseException:
        silence_restore_warnings()
        raise


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """The counters of a training checkpoint (None where the checkpoint lacks them)."""

    path: str
    step: int | None
    stage: int | None
    num_classes: int | None


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
            raise CheckpointError(
                f"{what}={path}: the folder holds no checkpoint "
                f"(no 'checkpoint' state file with a ckpt-N entry)"
            )
        return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise CheckpointError(
        f"{what}={path}: no checkpoint there (expected a prefix such as "
        f"runs/x/checkpoints/ckpt-1500, with a .index file, or a folder "
        f"holding checkpoints)"
    )


def read_checkpoint_meta(path: str) -> CheckpointMeta:
    """Reads ``step``, ``stage`` and ``num_classes`` of a checkpoint without building anything.

    Raises:
      CheckpointError: the checkpoint cannot be read (truncated or not a TF checkpoint).
    """
    try:
        reader = tf.train.load_checkpoint(path)
        names = reader.get_variable_to_shape_map()

        def value(key: str) -> int | None:
            full = key + _VALUE
            return int(reader.get_tensor(full)) if full in names else None

        return CheckpointMeta(
            path=path, step=value("step"), stage=value("stage"), num_classes=value("num_classes")
        )
    except _READ_ERRORS as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc


def _unreadable(prefix: str, exc: BaseException) -> str:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
    return (
        f"cannot read checkpoint {prefix} (files {prefix}.index and {prefix}.data-*): "
        f"{detail} (truncated or not a TensorFlow checkpoint?)"
    )


def verify_checkpoint(prefix: str) -> None:
    """Reads every tensor of a checkpoint back, so a truncated file is found before a restore.

    Raises:
      CheckpointError: naming the checkpoint's files, when any tensor cannot be read.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        variants = []
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype == tf.variant:  # e.g. a saved input iterator: NumPy cannot hold it
                variants.append(name)
            else:
                reader.get_tensor(name)
        if variants:
            with tf.device("/cpu:0"):
                tf.raw_ops.RestoreV2(
                    prefix=prefix,
                    tensor_names=variants,
                    shape_and_slices=[""] * len(variants),
                    dtypes=[tf.variant] * len(variants),
                )
    except _READ_ERRORS as exc:
        raise CheckpointError(_unreadable(prefix, exc)) from exc


def _step_of(prefix: str) -> int:
    found = re.search(r"-(\d+)$", prefix)
    return int(found.group(1)) if found else -1


def _candidates(checkpoint_dir: str) -> list[str]:
    """Checkpoint prefixes of the folder, newest (highest step) first: the state file's list
    (TensorFlow writes it after each complete save), or every ``ckpt-<n>.index`` when the state
    file is missing or damaged."""
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except _READ_ERRORS as exc:
        logger.warning(
            "checkpoint state file %s is unreadable (%s); looking for ckpt-* files",
            os.path.join(checkpoint_dir, "checkpoint"),
            (str(exc).strip().splitlines() or [type(exc).__name__])[-1],
        )
        state = None
    prefixes = set()
    if state is not None:
        for path in state.all_model_checkpoint_paths:
            path = path if os.path.isabs(path) else os.path.join(checkpoint_dir, path)
            if tf.io.gfile.exists(path + ".index"):
                prefixes.add(path)
    else:
        for index in tf.io.gfile.glob(os.path.join(checkpoint_dir, "ckpt-*.index")):
            prefixes.add(index[: -len(".index")])
        if prefixes:  # TF returns None for a state file it cannot parse, as for none
            logger.warning(
                "checkpoint state file %s is missing or unreadable; using the ckpt-* files found",
                os.path.join(checkpoint_dir, "checkpoint"),
            )
    return sorted(prefixes, key=lambda p: (_step_of(p), p), reverse=True)


def remove_stale_temp(checkpoint_dir: str) -> list[str]:
    """Removes ``*_temp`` folders a crashed or failed save left in ``checkpoint_dir``.

    Call only while no save is running (at the start of a run, on the chief). Returns the
    removed paths (each named in one warning).
    """
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(checkpoint_dir), "*_temp"))):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning(
            "removed %d unfinished checkpoint folder(s) of an earlier run: %s",
            len(removed),
            ", ".join(removed),
        )
    return removed


def find_resume_checkpoint(checkpoint_dir: str, *, clean: bool = True) -> str | None:
    """The newest intact checkpoint of a run's checkpoint folder, to resume from.

    Checkpoints that cannot be read back are passed over, each named in a warning. With
    ``clean`` (the chief, before training starts), stale ``*_temp`` folders are removed.

    Returns:
      The prefix, or None when the folder holds no checkpoint (a fresh start).

    Raises:
      CheckpointError: the folder holds checkpoints but none can be read (naming them): starting
        from scratch over them would silently throw the run away.
    """
    if not tf.io.gfile.isdir(checkpoint_dir):
        return None
    if clean:
        remove_stale_temp(checkpoint_dir)
    broken = []
    for prefix in _candidates(checkpoint_dir):
        try:
            verify_checkpoint(prefix)
        except CheckpointError as exc:
            broken.append(prefix)
            logger.warning("%s; passing over it", exc)
            continue
        if broken:
            logger.warning(
                "resuming from %s, the newest intact checkpoint (unreadable: %s)",
                prefix,
                ", ".join(broken),
            )
        return prefix
    if broken:
        raise CheckpointError(
            f"no checkpoint in {checkpoint_dir} can be read ({', '.join(broken)}): delete them "
            f"to train from scratch, or use a new --work-dir"
        )
    return None


def _is_disk_full(exc: BaseException) -> bool:
    return (
        getattr(exc, "errno", None) == errno.ENOSPC
        or isinstance(exc, tf.errors.ResourceExhaustedError)
        or "No space left on device" in str(exc)
    )


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """``manager.save(checkpoint_number=step)``; a failed save is one clear error, cleaned up.

    On failure the files of ``ckpt-<step>`` (the ``_temp`` folder, partial index/data files)
    are removed unless the state file already lists them, so the folder holds exactly the
    checkpoints written before, which stay intact (TensorFlow writes the state file last and
    atomically).

    Returns:
      The new checkpoint's prefix.

    Raises:
      CheckpointError: one line with the path and the reason (disk full named as such).
    """
    # CheckpointManager names checkpoints "<directory>/<checkpoint_name>-<number>"; the common
    # prefix is only exposed as the private _prefix ("ckpt" is the name the engine uses).
    base = getattr(manager, "_prefix", None) or os.path.join(manager.directory, "ckpt")
    prefix = f"{base}-{int(step)}"
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as exc:
        listed = _listed(manager.directory)
        shutil.rmtree(prefix + "_temp", ignore_errors=True)
        if prefix not in listed:
            for path in glob.glob(glob.escape(prefix) + ".index") + glob.glob(
                glob.escape(prefix) + ".data-*"
            ):
                with contextlib.suppress(OSError):
                    os.remove(path)
        previous = next((p for p in reversed(listed) if p != prefix), None)
        kept = (
            f"the previous checkpoint {previous} is intact"
            if previous
            else "no earlier checkpoint exists"
        )
        reason = (
            "no space left on device"
            if _is_disk_full(exc)
            else (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        )
        raise CheckpointError(
            f"cannot write checkpoint {prefix}: {reason} (in {manager.directory}); {kept}; "
            f"free space and rerun the same command to resume"
        ) from exc


def _listed(checkpoint_dir: str) -> list[str]:
    """The state file's checkpoint prefixes (oldest first); [] when it cannot be read."""
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except _READ_ERRORS:
        return []
    if state is None:
        return []
    return [
        p if os.path.isabs(p) else os.path.join(checkpoint_dir, p)
        for p in state.all_model_checkpoint_paths
    ]


def check_num_classes(meta: CheckpointMeta, num_classes: int, *, what: str) -> None:
    """Raises CheckpointError when the checkpoint was trained for another class count."""
    if meta.num_classes is not None and meta.num_classes != num_classes:
        raise CheckpointError(
            f"{what} {meta.path} was trained with {meta.num_classes} classes but this model has "
            f"{num_classes} (the class-dependent layers cannot be restored); use a checkpoint of "
            f"the same dataset, or a new --work-dir to train from scratch"
        )


def restore_model_weights(
    model: keras.Model, path: str, *, num_classes: int, what: str = "train.init_checkpoint"
) -> CheckpointMeta:
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
        with quiet_failed_restore():
            status = tf.train.Checkpoint(model=model).restore(prefix)
            status.expect_partial()
            status.assert_existing_objects_matched()
    except IndexError as exc:  # a truncated data file
        raise CheckpointError(_unreadable(prefix, exc)) from exc
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        detail = str(exc)
        if len(detail) > 1500:
            detail = detail[:1500] + " ..."
        raise CheckpointError(
            f"{what} {prefix} does not fit this model (different architecture "
            f"or class count?): {detail}"
        ) from exc
    return meta


def checkpoint_exists(prefix: str) -> bool:
    return tf.io.gfile.exists(prefix + ".index")


def snapshot_prefix(checkpoint_dir: str, name: str) -> str:
    """Path of a named model-only snapshot inside the checkpoint folder."""
    return os.path.join(checkpoint_dir, name, "model")
