"""THE run folder (work dir): its files, its checkpoints, its class names and its lock.

Layout written by training (every tool reads it through this module)::

    <work_dir>/
      config.yaml            the resolved config of the run (`RUN_CONFIG_NAME`)
      classes.txt            one class name per line, line i = model class i (`CLASSES_NAME`)
      checkpoints/ckpt-N     tf.train checkpoints (`CHECKPOINTS_DIR`)
      checkpoints/best/      the best validation checkpoint, when the run kept one
      .lock                  held while a run writes here (`WorkDirLock`)
      export/<name>/<v>/     the end-of-training SavedModel (unless --export-dir)

A tool given a path finds the run's files from it: a run folder, its `checkpoints/` folder, a
checkpoint prefix (`.../checkpoints/ckpt-1500`) all lead to the same `config.yaml` and
`classes.txt` (`find_run_file` looks in the path's folder and two parents).

Checkpoint choice (`find_checkpoint`): a prefix is used as is; a folder of checkpoints gives its
latest; a run folder gives `checkpoints/best/`'s checkpoint when it exists (the weights the
run delivers), else the latest of `checkpoints/` (`which="latest"` always takes the latest).

Importing this module imports no TensorFlow (only the functions that read checkpoints do).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from rfcn_tf.errors import CheckpointError, RunDirError, RunLockedError

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS_DIR",
    "CLASSES_NAME",
    "LOCK_NAME",
    "RUN_CONFIG_NAME",
    "WorkDirLock",
    "broken_checkpoint_file",
    "checkpoint_files",
    "class_names_for",
    "find_checkpoint",
    "find_run_dir",
    "find_run_file",
    "read_class_names",
    "resolve_config",
    "write_run_files",
]

logger = logging.getLogger("rfcn_tf.run_dir")

RUN_CONFIG_NAME = "config.yaml"
CLASSES_NAME = "classes.txt"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # inside CHECKPOINTS_DIR
LOCK_NAME = ".lock"


# --------------------------------------------------------------------------------------------
# Files


def find_run_file(path: str, name: str) -> str | None:
    """A file a training run saved beside its checkpoints (`config.yaml`, `classes.txt`).

    Looks in `path` (a folder) or its folder (a checkpoint prefix) and up to two parents
    (`<work_dir>/checkpoints/ckpt-N` -> `<work_dir>/<name>`; also `checkpoints/best/ckpt-N`);
    None when absent.
    """
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    folder = os.path.abspath(folder or ".")
    for _ in range(4):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
        folder = os.path.dirname(folder)
    return None


def find_run_dir(path: str) -> str | None:
    """The run folder `path` belongs to (the folder of its `config.yaml`), or None."""
    found = find_run_file(path, RUN_CONFIG_NAME)
    return os.path.dirname(found) if found else None


def write_run_files(work_dir: str, cfg, *, class_names: Sequence[str]) -> str:
    """Writes `config.yaml` (the config tree; the classes as comments) and `classes.txt`.

    Returns:
        the config.yaml path.
    """
    import yaml

    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, RUN_CONFIG_NAME)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    text += "# classes of the run (model ids):\n" + "".join(
        f"#   class {i + 1}: {name}\n" for i, name in enumerate(class_names)
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(work_dir, CLASSES_NAME), "w", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in class_names))
    return path


def read_class_names(path: str) -> list[str] | None:
    """The run's `classes.txt` found from `path` (run folder, checkpoint folder or prefix)."""
    found = find_run_file(path, CLASSES_NAME)
    if found is None:
        return None
    with open(found, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f if line.strip()]
    return names or None


def resolve_config(
    config: str | None, overrides: Sequence[str] = (), *, checkpoint: str | None = None
):
    """The config tree for a tool run.

    Args:
        config: preset name or YAML path (`--config`); None: the run's saved `config.yaml`
            found from `checkpoint`, else the default preset.
        overrides: `--set key=value` strings, applied last.
        checkpoint: the model path the tool was given, to find the run's config.

    Returns:
        `(Config, description)`: the tree and where it came from (for reports).
    """
    from rfcn_tf.config import load_config

    if config is None and checkpoint is not None:
        found = find_run_file(checkpoint, RUN_CONFIG_NAME)
        if found is not None:
            return load_config(found, list(overrides), old_layout="migrate"), found
    cfg = load_config(config, list(overrides))
    return cfg, config or "default preset"


def class_names_for(cfg, path: str | None) -> tuple[list[str], str]:
    """Class names of a model: `data.class_names`, else the run's `classes.txt`, else the
    dataset source's (which may be absent where one only predicts).

    Returns:
        `(names, where they came from)`.
    """
    if cfg.data.class_names:
        return list(cfg.data.class_names), "data.class_names"
    if path is not None:
        names = read_class_names(path)
        if names:
            return names, find_run_file(path, CLASSES_NAME)
    from rfcn_tf.data.pipeline import source_info

    split = cfg.data.val_split
    try:
        info = source_info(cfg.data, split=split)
    except Exception as exc:  # any failure means: the names are unknown
        raise RunDirError(
            f"cannot learn the class names from the dataset ({cfg.data.source}, split "
            f"'{split}'): {exc}; set them with --set 'data.class_names=[a, b, ...]'"
        ) from None
    return list(info.class_names), f"the dataset ({cfg.data.source}, split '{split}')"


# --------------------------------------------------------------------------------------------
# Checkpoints


def _latest_in(folder: str) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(folder) if os.path.isdir(folder) else None


def find_checkpoint(path: str, *, which: str = "best", what: str = "--checkpoint") -> str:
    """A checkpoint prefix from a run folder, a checkpoint folder or a prefix (module docstring).

    Args:
        path: the path the user gave.
        which: "best": a run folder's `checkpoints/best/` checkpoint when it has one, else its
            latest; "latest": always the latest of `checkpoints/`.
        what: how the user named the path, for errors.

    Raises:
        CheckpointError: no checkpoint there.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        run_ckpts = os.path.join(path, CHECKPOINTS_DIR)
        candidates = []
        if os.path.isdir(run_ckpts):
            if which == "best":
                candidates.append(os.path.join(run_ckpts, BEST_DIR))
            candidates.append(run_ckpts)
        elif which == "best" and os.path.basename(os.path.normpath(path)) == CHECKPOINTS_DIR:
            candidates.append(os.path.join(path, BEST_DIR))
        candidates.append(path)
        for folder in candidates:
            prefix = _latest_in(folder)
            if prefix is not None:
                return prefix
        raise CheckpointError(
            f"{what} {path}: the folder holds no checkpoint (no "
            "'checkpoint' state file with a ckpt-N entry, here or in "
            f"{CHECKPOINTS_DIR}/)"
        )
    raise CheckpointError(
        f"{what} {path}: no checkpoint there (expected a run folder, a "
        "folder of checkpoints, or a prefix such as "
        "runs/x/checkpoints/ckpt-1500 with a .index file)"
    )


def checkpoint_files(prefix: str) -> list[str]:
    """The files of a checkpoint: `<prefix>.index` and its `<prefix>.data-*` shards."""
    folder = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    names = sorted(n for n in os.listdir(folder) if n.startswith(base + ".data-"))
    return [prefix + ".index"] + [os.path.join(folder, n) for n in names]


def broken_checkpoint_file(prefix: str) -> str | None:
    """Which file of a checkpoint is truncated or unreadable (reads every tensor), or None.

    Used to turn TensorFlow's "Read less bytes than requested" (no path) into a message
    naming the file.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError, IndexError):
        return prefix + ".index"
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype == tf.variant:  # a saved tf.data iterator: not readable as a tensor here
            continue
        try:
            reader.get_tensor(key)
        except (tf.errors.OpError, ValueError, IndexError):
            data = checkpoint_files(prefix)[1:]
            return data[0] if len(data) == 1 else f"{prefix}.data-* (variable {key})"
    return None


# --------------------------------------------------------------------------------------------
# The work-dir lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class WorkDirLock:
    """A lock file (`<work_dir>/.lock`: pid, host, start time, command) held while a run writes.

    `acquire()` creates it atomically. When it exists: a live process (any host, or this host
    with a live pid) makes `acquire` raise `RunLockedError` naming it; a stale lock (this host,
    dead pid) is taken over with a warning. Multi-worker runs share one work dir: only the
    chief takes the lock (`enabled=False` on the other workers). Use as a context manager.

    Args:
        work_dir: the run folder (created).
        enabled: False: do nothing (non-chief workers).
    """

    def __init__(self, work_dir: str, *, enabled: bool = True):
        self.work_dir = work_dir
        self.path = os.path.join(work_dir, LOCK_NAME)
        self.enabled = enabled
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }

    def read(self) -> dict[str, Any] | None:
        """The current holder's record, None when unlocked ({} when unreadable)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> WorkDirLock:
        if not self.enabled or self.held:
            return self
        os.makedirs(self.work_dir, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.read()
                if holder is None:
                    continue  # released meanwhile
                pid, host = holder.get("pid"), holder.get("host")
                same_host = host == socket.gethostname()
                if same_host and isinstance(pid, int) and pid == os.getpid():
                    break  # our own (re-entered)
                if same_host and isinstance(pid, int) and not _pid_alive(pid):
                    logger.warning(
                        "work dir %s: taking over the stale lock of process %d on %s "
                        "(started %s; it is no longer running)",
                        self.work_dir,
                        pid,
                        host,
                        holder.get("started", "?"),
                    )
                    os.remove(self.path)
                    continue
                raise RunLockedError(
                    f"work dir {self.work_dir} is in use by process {pid} on {host} (started "
                    f"{holder.get('started', '?')}: {holder.get('command', '?')}); wait for it, "
                    f"stop it, or use another --work-dir (lock file {self.path})"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
            break
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        holder = self.read()
        if (
            holder
            and holder.get("pid") == os.getpid()
            and holder.get("host") == socket.gethostname()
        ):
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> WorkDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
