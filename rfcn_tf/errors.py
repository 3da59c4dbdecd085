"""The package's exceptions: every error rfcn_tf raises on purpose derives from `RfcnError`.

Catch `rfcn_tf.RfcnError` to handle any of them; the CLIs print such an error as one line
(`error: <message>`, exit status 1). Each message names the culprit (file, key, tensor) and
its value. The classes also derive from the built-in type they replace (ValueError for bad
values, RuntimeError for failed operations), so older `except ValueError` code keeps working.

This module imports nothing (it is safe to import from anywhere, TF-free).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "InputError",
    "RfcnError",
    "RunDirError",
    "RunLockedError",
    "TrainingError",
]


class RfcnError(Exception):
    """Base of every exception rfcn_tf raises on purpose."""


class ConfigError(RfcnError, ValueError):
    """A configuration file or override that does not fit the tree (unknown key, bad value)."""


class DataError(RfcnError, ValueError):
    """A dataset that cannot be read as configured; the message names the file and the value."""


class InputError(RfcnError, ValueError):
    """An input given to the inference API or a CLI that cannot be used (unreadable image file,
    wrong dtype or rank, empty image, a path that holds no model)."""


class CheckpointError(RfcnError, RuntimeError):
    """A checkpoint that cannot be found, read or restored into the model."""


class ExportError(RfcnError, RuntimeError):
    """An export that cannot be written, loaded or does not pass its checks."""


class RunDirError(RfcnError, RuntimeError):
    """A run folder (work dir) that cannot be used: missing files, unreadable config."""


class RunLockedError(RunDirError):
    """Another live process holds the work dir's lock."""


class TrainingError(RfcnError, RuntimeError):
    """A training run that cannot start or continue as configured (work dir, batch size)."""
