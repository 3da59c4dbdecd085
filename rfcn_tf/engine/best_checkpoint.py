"""The best checkpoint by a validation metric, and early stopping on it.

Layout inside the run folder (``<work_dir>``), beside the latest checkpoints::

    checkpoints/ckpt-N              latest training checkpoints (``checkpoints.py``)
    checkpoints/best/ckpt-S         the model weights (EMA weights when ``train.ema_decay``) of
                                    the best validation so far, with step and num_classes, so
                                    ``restore_model_weights`` and ``read_checkpoint_meta`` read it
    best.json                       {"metric", "step", "value", "checkpoint", "history"}: the best
                                    step and its value, every validation of the run ([{"step",
                                    "value"}]; a re-run of a step after a resume replaces it)

``best.json`` is written after the checkpoint it names, so it never points at a missing file.
The metric is a ``section/name`` path into the evaluator's metrics dict (``coco/AP50``,
``coco/AP``, ``voc07/mAP``, ``voc2010/mAP``); higher is better. A NaN value (no ground truth)
never becomes best.

Early stop (``train.early_stop_patience`` = P > 0): stop after P validations in a row without
improvement over the best; resuming an early-stopped run stops again at once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

__all__ = [
    "BEST_DIR",
    "BEST_RECORD",
    "METRIC_SECTIONS",
    "BestCheckpoint",
    "check_metric_name",
    "find_best_checkpoint",
    "metric_value",
    "read_best_record",
]

BEST_DIR = "best"  # inside <work_dir>/checkpoints
BEST_RECORD = "best.json"  # inside <work_dir>
METRIC_SECTIONS = ("coco", "voc07", "voc2010")


def check_metric_name(name: str) -> None:
    """Raises ValueError unless ``name`` is ``section/key`` with a known section."""
    section, _, key = str(name).partition("/")
    if section not in METRIC_SECTIONS or not key:
        raise ValueError(
            f"train.best_metric must look like coco/AP50, coco/AP, voc07/mAP or "
            f"voc2010/mAP (section one of {', '.join(METRIC_SECTIONS)}), got {name!r}"
        )


def metric_value(metrics: Mapping[str, Any], name: str) -> float:
    """``metrics[section][key]`` for ``name = "section/key"`` as a float.

    Raises:
      ValueError: a malformed name or a key the metrics lack (naming the keys it has).
    """
    check_metric_name(name)
    section, key = name.split("/", 1)
    values = metrics.get(section, {})
    if key not in values:
        raise ValueError(
            f"train.best_metric={name!r}: the evaluation reports no {key!r} under "
            f"{section!r} (it has {', '.join(sorted(values))})"
        )
    return float(values[key])


def read_best_record(work_dir: str) -> dict | None:
    """The run's ``best.json`` (None when there is none or it cannot be parsed)."""
    path = os.path.join(work_dir, BEST_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            record = json.load(f)
    except (ValueError, tf.errors.OpError):
        return None
    return record if isinstance(record, dict) else None


def find_best_checkpoint(work_dir: str) -> str | None:
    """The best checkpoint's prefix of a run folder, or None when the run kept none.

    ``rfcn_tf.load(run_dir)``, export and the end-of-training evaluation use it when it exists.
    """
    record = read_best_record(work_dir)
    if record and record.get("checkpoint"):
        prefix = os.path.join(work_dir, record["checkpoint"])
        if tf.io.gfile.exists(prefix + ".index"):
            return prefix
    best_dir = os.path.join(work_dir, "checkpoints", BEST_DIR)
    return tf.train.latest_checkpoint(best_dir) if tf.io.gfile.isdir(best_dir) else None


class BestCheckpoint:
    """Tracks the best validation value, saves its weights, counts validations without gain.

    Args:
      work_dir: the run folder (``best.json`` there, checkpoints in ``checkpoints/best``).
      model: saved (its current weights: swap EMA weights in before ``update``) with ``step``
        and ``num_classes`` when a value improves. None: record only.
      num_classes: the model's C, stored in the checkpoint (checked when it is loaded).
      metric: ``section/key`` (``check_metric_name``).
      patience: early stop after this many validations without improvement (0 = never).
      min_delta: an improvement must exceed the best by more than this.
    """

    def __init__(
        self,
        work_dir: str,
        *,
        model=None,
        num_classes: int | None = None,
        metric: str = "coco/AP50",
        patience: int = 0,
        min_delta: float = 0.0,
    ):
        check_metric_name(metric)
        if patience < 0:
            raise ValueError(f"train.early_stop_patience must be >= 0, got {patience}")
        self.work_dir = work_dir
        self.metric = metric
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.history: list[dict] = []
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.manager = None
        self._step_var = None
        if model is not None:
            if num_classes is None:
                raise ValueError("BestCheckpoint needs num_classes with a model")
            self._step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_step")
            checkpoint = tf.train.Checkpoint(
                model=model,
                step=self._step_var,
                num_classes=tf.Variable(int(num_classes), dtype=tf.int64, trainable=False),
            )
            self.manager = tf.train.CheckpointManager(
                checkpoint,
                os.path.join(work_dir, "checkpoints", BEST_DIR),
                max_to_keep=1,
                checkpoint_name="ckpt",
            )
        record = read_best_record(work_dir)
        if record and record.get("metric") == metric:
            self.history = [
                {"step": int(h["step"]), "value": _float(h["value"])}
                for h in record.get("history", [])
            ]
            if record.get("step") is not None:
                self.best_step = int(record["step"])
                self.best_value = _float(record["value"])

    def is_improvement(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return self.best_value is None or value > self.best_value + self.min_delta

    def update(self, step: int, value: float) -> bool:
        """Records the validation of ``step``; saves the checkpoint when it is the best.

        Returns:
          True when ``value`` became the best.
        """
        step, value = int(step), float(value)
        self.history = [h for h in self.history if h["step"] != step]
        self.history.append({"step": step, "value": value})
        self.history.sort(key=lambda h: h["step"])
        improved = self.is_improvement(value)
        if improved:
            self.best_step, self.best_value = step, value
            if self.manager is not None:
                self._step_var.assign(step)
                self.manager.save(checkpoint_number=step)
        self._write()
        return improved

    def checkpoint_path(self) -> str | None:
        if self.manager is None or self.best_step is None:
            return None
        return os.path.join("checkpoints", BEST_DIR, f"ckpt-{self.best_step}")

    def validations_without_improvement(self) -> int:
        """Validations after the best one (all of them when none was best yet)."""
        if self.best_step is None:
            return len(self.history)
        return sum(1 for h in self.history if h["step"] > self.best_step)

    def should_stop(self) -> bool:
        return self.patience > 0 and self.validations_without_improvement() >= self.patience

    def record(self) -> dict:
        return {
            "metric": self.metric,
            "step": self.best_step,
            "value": _json_float(self.best_value),
            "checkpoint": self.checkpoint_path(),
            "history": [
                {"step": h["step"], "value": _json_float(h["value"])} for h in self.history
            ],
        }

    def _write(self) -> None:
        os.makedirs(self.work_dir, exist_ok=True)
        path = os.path.join(self.work_dir, BEST_RECORD)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(self.record(), f, indent=1)
        os.replace(temporary, path)


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
