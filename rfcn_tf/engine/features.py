"""The optional training features, assembled from the config for a training run.

One object so that whoever assembles a run (``rfcn_tf.train``) adds them with a few calls:

    cfg = resolve_schedule(cfg)                  # train.epochs etc. -> step counts (before
                                                 # --print-config and the saved config.yaml)
    ...build the strategy and the model (inside strategy.scope())...
    features = TrainingFeatures(cfg, model=model, strategy=strategy, class_names=names,
                                writer=writer)
    hooks += features.hooks()                    # in hooks_fn: validation (chief only)
    result = run_training(..., **features.run_training_kwargs())   # EMA, data resume
    final = features.finalize()                  # model := best checkpoint (or EMA weights)
    print(features.summary_line(final))          # which step, its validation score

What each does (``train.*`` keys):

- ``eval_every`` / ``eval_every_epochs``, ``best_metric``, ``early_stop_patience``:
  validation on ``data.val_split`` through the evaluator (``validation.py``), the best
  checkpoint in ``<work_dir>/checkpoints/best`` + ``<work_dir>/best.json``
  (``best_checkpoint.py``), early stop.
- ``ema_decay``: weight EMA (``ema.py``), used for validation, best and the final weights.
- ``sync_batchnorm``: BatchNorm statistics all-reduced over replicas (``sync_batchnorm.py``).
- ``data_resume``: the input stream continues where it stopped (``data_resume.py``).
- ``epochs``, ``warmup_epochs``, ``lr_epochs``: ``epochs.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import tensorflow as tf

from rfcn_tf.engine.best_checkpoint import BestCheckpoint
from rfcn_tf.engine.data_resume import choose_data_resume
from rfcn_tf.engine.epochs import resolve_epochs, uses_epochs
from rfcn_tf.engine.validation import (
    ValidationHook,
    check_distribution,
    dataset_evaluate_fn,
    use_best_weights,
)

__all__ = ["TrainingFeatures", "resolve_schedule"]

logger = logging.getLogger("rfcn_tf.train")


def resolve_schedule(cfg, *, num_train_images: int | None = None):
    """``cfg`` with its epoch-stated schedule turned into steps (``epochs.resolve_epochs``).

    Args:
      cfg: the config tree.
      num_train_images: the training split's size; None reads it from the data source (only
        when something is stated in epochs).

    Raises:
      ConfigError: epochs with an endless training stream, a decay boundary past the end.
    """
    from rfcn_tf.config import ConfigError

    if not uses_epochs(cfg.train):
        return cfg
    if num_train_images is None:
        from rfcn_tf.data.pipeline import source_info

        info = source_info(cfg.data, split=cfg.data.train_split)
        num_train_images = info.num_examples
    try:
        resolved = resolve_epochs(cfg, num_train_images)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    tcfg = resolved.train
    logger.info(
        "train.epochs=%s over %d training images, global batch %d: %.1f steps per "
        "epoch -> train.steps=%d, warmup_steps=%d, lr_steps=%s, eval_every=%d",
        cfg.train.epochs,
        num_train_images,
        tcfg.batch_size,
        num_train_images / tcfg.batch_size,
        tcfg.steps,
        tcfg.warmup_steps,
        tcfg.lr_steps,
        tcfg.eval_every,
    )
    return resolved


class TrainingFeatures:
    """Validation/best/early stop, EMA, sync BatchNorm and data resume of one run.

    Build after the model, outside ``strategy.scope()`` (the EMA's shadows are created inside
    it here).

    Args:
      cfg: the resolved config (``resolve_schedule`` applied).
      model: the built detector.
      strategy: the run's strategy.
      class_names: C names of the training split.
      writer: the chief's TensorBoard writer (validation scalars), or None.
      work_dir: the run folder (default ``cfg.train.work_dir``).

    Raises:
      ConfigError: early stop without validation or under multi-worker training,
        ``data_resume=iterator`` where the iterator cannot be saved.
    """

    def __init__(
        self,
        cfg,
        *,
        model,
        strategy: tf.distribute.Strategy,
        class_names: Sequence[str],
        writer=None,
        work_dir: str | None = None,
    ):
        from rfcn_tf.config import ConfigError
        from rfcn_tf.engine.ema import WeightEMA
        from rfcn_tf.engine.strategy import is_chief
        from rfcn_tf.engine.sync_batchnorm import synchronize_batchnorm

        self.cfg = cfg
        tcfg = cfg.train
        self.model = model
        self.strategy = strategy
        self.class_names = list(class_names)
        self.work_dir = work_dir or tcfg.work_dir
        self.writer = writer
        self.chief = is_chief(strategy)
        replicas = strategy.num_replicas_in_sync
        if tcfg.early_stop_patience and not tcfg.eval_every:
            raise ConfigError(
                f"train.early_stop_patience={tcfg.early_stop_patience} needs "
                f"validation during training: set train.eval_every (steps) or "
                f"train.eval_every_epochs"
            )
        try:
            check_distribution(strategy, early_stop_patience=tcfg.early_stop_patience)
            # A tf.data service iterator cannot be saved either (TF: SaveInternal unsupported).
            self.data_resume = choose_data_resume(
                tcfg.data_resume, cached=bool(cfg.data.cache or cfg.data.service), strategy=strategy
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if tcfg.sync_batchnorm:
            synchronize_batchnorm(
                model, num_replicas=replicas, per_replica_batch=max(1, tcfg.batch_size // replicas)
            )
        self.ema = None
        if tcfg.ema_decay is not None:
            with strategy.scope():
                self.ema = WeightEMA(model, tcfg.ema_decay)
        self.best: BestCheckpoint | None = None
        self._hook: ValidationHook | None = None
        if tcfg.eval_every and self.chief:
            self.best = BestCheckpoint(
                self.work_dir,
                model=model,
                num_classes=len(class_names),
                metric=tcfg.best_metric,
                patience=tcfg.early_stop_patience,
            )
            self._hook = ValidationHook(
                self._evaluate_fn(),
                every=tcfg.eval_every,
                best=self.best,
                writer=writer,
                ema=self.ema,
            )

    def _evaluate_fn(self):
        from rfcn_tf.data.pipeline import build_dataset, source_info

        cfg = self.cfg
        split = cfg.data.val_split
        if split == (cfg.eval.split or "test") or split == "test":
            logger.warning(
                "validation during training uses split %r, which is also the test "
                "split: the best checkpoint is then picked on test (set "
                "data.val_split to a held-out split, as configs/bccd_val.yaml does)",
                split,
            )
        info = source_info(cfg.data, split=split)
        logger.info(
            "validation every %d steps on split %r (%s images), best by %s%s",
            cfg.train.eval_every,
            split,
            info.num_examples,
            cfg.train.best_metric,
            f", early stop after {cfg.train.early_stop_patience} without gain"
            if cfg.train.early_stop_patience
            else "",
        )
        return dataset_evaluate_fn(
            self.model.detect,
            lambda: build_dataset(
                cfg.data, split=split, training=False, batch_size=cfg.eval.batch_size
            ),
            class_names=self.class_names,
            category_ids=info.category_ids,
            num_images=info.num_examples,
            max_images=cfg.eval.max_images,
            score_threshold=cfg.eval.score_threshold,
        )

    def hooks(self) -> list:
        """The loop hooks to add in each stage (validation on the chief; empty otherwise)."""
        return [self._hook] if self._hook is not None else []

    def run_training_kwargs(self) -> dict:
        """``ema`` and ``data_resume`` for ``schemes.run_training``."""
        return {"ema": self.ema, "data_resume": self.data_resume}

    @property
    def validation_seconds(self) -> float:
        return self._hook.seconds if self._hook is not None else 0.0

    def finalize(self) -> dict:
        """Puts the weights the run delivers into the model; returns what they are.

        The best checkpoint when the run kept one, else the EMA weights (``ema_decay``), else
        the last weights as they are.

        Returns:
          ``{"weights": "best" | "ema" | "last", "best": best.json's record with the full
          checkpoint prefix, or None}``.
        """
        record = use_best_weights(self.model, self.work_dir, num_classes=len(self.class_names))
        if record is not None:
            logger.info(
                "using the best checkpoint %s (step %s, %s %.4f on validation)",
                os.path.basename(record["checkpoint"]),
                record.get("step"),
                record.get("metric"),
                record.get("value") or float("nan"),
            )
            return {"weights": "best", "best": record}
        if self.ema is not None:
            self.ema.copy_to_model()
            return {"weights": "ema", "best": None}
        return {"weights": "last", "best": None}

    @staticmethod
    def summary_line(final: dict) -> str | None:
        """``best checkpoint: step S, coco/AP50 0.9123 on validation (path)``, or None."""
        record = (final or {}).get("best")
        if not record:
            return None
        value = record.get("value")
        return (
            f"best checkpoint: step {record.get('step')}, {record.get('metric')} "
            f"{'n/a' if value is None else f'{value:.4f}'} on validation "
            f"({record['checkpoint']})"
        )
