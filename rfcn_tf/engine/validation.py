"""Validation during training: evaluate every N steps, keep the best checkpoint, stop early.

Entry points for whoever assembles a training run (``rfcn_tf.train`` / ``rfcn_tf.training``):

- ``ValidationHook(evaluate_fn, every=..., best=BestCheckpoint(...), writer=..., ema=...)``: a
  loop hook (chief only). Every ``every`` steps (and after the last step) it calls
  ``evaluate_fn(step) -> metrics`` (the evaluator's metrics dict), with the EMA weights
  swapped in when ``ema`` is given, writes ``val/coco_AP``, ``val/coco_AP50``, ``val/coco_AP75``,
  ``val/voc07_mAP``, ``val/voc2010_mAP`` and ``val/best_<metric>`` to TensorBoard, logs one
  line, hands the metric to ``best`` (which saves ``checkpoints/best/`` on improvement) and
  requests the loop's stop when ``best.should_stop()`` (early stop).
- ``dataset_evaluate_fn(detect_fn, dataset_fn, ...)``: ``evaluate_fn`` over a validation
  split through ``rfcn_tf.evaluation.evaluator.evaluate_detector``, the evaluator the
  ``rfcn_tf.evaluate`` CLI uses (same metrics, same box conversion).
- ``use_best_weights(model, work_dir, num_classes)``: after training, loads the best checkpoint
  into the model when the run kept one (the end-of-training evaluation and export then use
  it) and returns its record (step, metric, value), else None.

Multi-worker runs: validation runs on the chief only (the other workers go on training); early
stop would need every worker to stop at the same step, so it is refused there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from rfcn_tf.engine.best_checkpoint import (
    BestCheckpoint,
    find_best_checkpoint,
    metric_value,
    read_best_record,
)
from rfcn_tf.engine.callbacks import write_scalar
from rfcn_tf.engine.loop import Hook, TrainLoop

__all__ = ["ValidationHook", "check_distribution", "dataset_evaluate_fn", "use_best_weights"]

logger = logging.getLogger("rfcn_tf.train")

# TensorBoard tag -> (section, key) of the evaluator's metrics dict.
_SCALARS = {
    "val/coco_AP": ("coco", "AP"),
    "val/coco_AP50": ("coco", "AP50"),
    "val/coco_AP75": ("coco", "AP75"),
    "val/voc07_mAP": ("voc07", "mAP"),
    "val/voc2010_mAP": ("voc2010", "mAP"),
}


def dataset_evaluate_fn(
    detect_fn: Callable,
    dataset_fn: Callable[[], Any],
    *,
    class_names,
    category_ids=None,
    num_images: int | None = None,
    max_images: int | None = None,
    score_threshold: float | None = None,
) -> Callable[[int], dict]:
    """``evaluate_fn(step) -> metrics`` over one pass of ``dataset_fn()`` (no files written).

    Args:
      detect_fn: ``model.detect`` (batched uint8 images, image_shapes -> detections).
      dataset_fn: builds the validation dataset (``build_dataset(..., training=False)``); called
        once, the dataset is reused for every validation.
      class_names, category_ids, num_images, max_images, score_threshold: as
        ``evaluate_detector``.
    """
    from rfcn_tf.evaluation.evaluator import evaluate_detector

    dataset = dataset_fn()

    def evaluate(step: int) -> dict:
        return evaluate_detector(
            detect_fn,
            dataset,
            class_names=class_names,
            category_ids=category_ids,
            out_dir=None,
            max_images=max_images,
            progress=False,
            score_threshold=score_threshold,
            num_images=num_images,
            info={"step": int(step)},
        )

    return evaluate


class ValidationHook(Hook):
    """Validates every ``every`` steps and after the last one (module docstring).

    Args:
      evaluate_fn: ``step -> metrics dict`` (``dataset_evaluate_fn``).
      every: steps between validations (>= 1).
      best: the :class:`BestCheckpoint` to update (its ``metric`` is logged).
      writer: a ``tf.summary`` writer (None: no TensorBoard scalars).
      ema: a ``WeightEMA``: validate (and save best) with the EMA weights.
      log: the logger.
    """

    def __init__(
        self,
        evaluate_fn: Callable[[int], Mapping],
        *,
        every: int,
        best: BestCheckpoint,
        writer=None,
        ema=None,
        log: logging.Logger | None = None,
    ):
        if every < 1:
            raise ValueError(f"validation interval must be >= 1 step, got {every}")
        self.evaluate_fn = evaluate_fn
        self.every = int(every)
        self.best = best
        self.writer = writer
        self.ema = ema
        self.log = log or logger
        self.last_validated: int | None = None
        self.seconds = 0.0  # time spent validating in this process
        self.count = 0

    def on_train_begin(self, loop: TrainLoop) -> None:
        if self.best.should_stop():
            loop.request_stop(self._stop_message())

    def _stop_message(self) -> str:
        best = (
            f"best {self.best.best_value:.4f} at step {self.best.best_step}"
            if self.best.best_value is not None
            else "no finite value yet"
        )
        return (
            f"early stop: {self.best.validations_without_improvement()} validations "
            f"without improvement of {self.best.metric} ({best}; "
            f"train.early_stop_patience={self.best.patience})"
        )

    def validate(self, loop: TrainLoop, step: int) -> dict:
        started = time.perf_counter()
        if self.ema is not None:
            with self.ema.swapped():
                metrics = dict(self.evaluate_fn(step))
                value = metric_value(metrics, self.best.metric)
                improved = self.best.update(step, value)
        else:
            metrics = dict(self.evaluate_fn(step))
            value = metric_value(metrics, self.best.metric)
            improved = self.best.update(step, value)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.count += 1
        self.last_validated = step
        if self.writer is not None:
            with self.writer.as_default():
                for tag, (section, key) in _SCALARS.items():
                    number = metrics.get(section, {}).get(key)
                    if number is not None and math.isfinite(float(number)):
                        write_scalar(tag, float(number), step)
                if self.best.best_value is not None:
                    write_scalar(
                        f"val/best_{self.best.metric.replace('/', '_')}", self.best.best_value, step
                    )
            self.writer.flush()
        coco, voc = metrics["coco"], metrics["voc2010"]
        self.log.info(
            "validation at step %d (%d images, %.1f s): COCO AP %.4f AP50 %.4f, VOC2010 mAP "
            "%.4f; %s %.4f%s",
            step,
            metrics.get("num_images", 0),
            seconds,
            coco["AP"],
            coco["AP50"],
            voc["mAP"],
            self.best.metric,
            value,
            " (new best)"
            if improved
            else (
                f" (best {self.best.best_value:.4f} at step {self.best.best_step})"
                if self.best.best_value is not None
                else ""
            ),
        )
        if self.best.should_stop():
            loop.request_stop(self._stop_message())
            self.log.info("%s", loop.stop_reason)
        return metrics

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        if step % self.every == 0:
            self.validate(loop, step)

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        if (
            loop.step > loop.start_step
            and self.last_validated != loop.step
            and loop.step == loop.end_step
        ):
            self.validate(loop, loop.step)


def use_best_weights(model: keras.Model, work_dir: str, *, num_classes: int) -> dict | None:
    """Loads the run's best checkpoint into ``model``; returns its record, or None if none.

    The record: ``{"metric", "step", "value", "checkpoint", "history"}`` (``best.json``) with
    ``"checkpoint"`` the full prefix.
    """
    from rfcn_tf.engine.checkpoints import restore_model_weights

    prefix = find_best_checkpoint(work_dir)
    if prefix is None:
        return None
    restore_model_weights(model, prefix, num_classes=num_classes, what="the best checkpoint")
    record = dict(read_best_record(work_dir) or {})
    record["checkpoint"] = prefix
    return record


def check_distribution(strategy: tf.distribute.Strategy, *, early_stop_patience: int) -> None:
    """Refuses early stop under multi-worker training (the workers would not stop together)."""
    if early_stop_patience and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError(
            f"train.early_stop_patience={early_stop_patience} is not supported with "
            f"the multi_worker strategy (validation runs on the chief only, the "
            f"other workers could not stop at the same step); set it to 0"
        )
