"""Schedules stated in epochs (``train.epochs``), turned into the step counts training runs.

One epoch is one pass over the training split: ``N / B`` optimizer steps for N training images
and the GLOBAL batch B (``train.batch_size``, all replicas together). The number of replicas
does not change it: each of R replicas takes B / R images per step, and the pipelines shard
the split between them, so the whole split still passes in N / B steps. The training stream
repeats before batching (no image is dropped at an epoch's end), so E epochs are
``ceil(E * N / B)`` steps.

What scales with the epoch (each optional; when given it replaces the step field, which is
used otherwise):

    train.epochs             -> train.steps             (per stage for the alternating scheme,
                                                         as train.steps is)
    train.warmup_epochs      -> train.warmup_steps
    train.lr_epochs          -> train.lr_steps          (step-schedule boundaries)
    train.eval_every_epochs  -> train.eval_every

``resolve_epochs(cfg, num_train_images)`` returns the config with the step fields filled in, so
``--print-config`` and the run's saved ``config.yaml`` show the steps that were run (deriving
again from that file gives the same numbers).
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["epoch_steps", "resolve_epochs", "steps_per_epoch", "uses_epochs"]


def uses_epochs(train_cfg) -> bool:
    """True when any schedule field of ``train_cfg`` is stated in epochs."""
    return (
        train_cfg.epochs is not None
        or train_cfg.warmup_epochs is not None
        or bool(train_cfg.lr_epochs)
        or train_cfg.eval_every_epochs is not None
    )


def steps_per_epoch(num_images: int, global_batch_size: int) -> float:
    """Optimizer steps per pass over ``num_images`` with the global batch (may be fractional)."""
    if num_images < 1:
        raise ValueError(f"an epoch needs a non-empty training split, got {num_images} images")
    if global_batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {global_batch_size}")
    return num_images / global_batch_size


def epoch_steps(
    epochs: float, num_images: int, global_batch_size: int, *, what: str = "train.epochs"
) -> int:
    """``ceil(epochs * num_images / global_batch_size)``, at least 1 for positive ``epochs``.

    Raises:
      ValueError: ``epochs`` <= 0 (naming ``what``).
    """
    if not epochs > 0:
        raise ValueError(f"{what} must be > 0, got {epochs}")
    # round() first: 2.5 epochs of 146 steps is 365 steps, not 366 from float noise.
    exact = round(epochs * steps_per_epoch(num_images, global_batch_size), 6)
    return max(1, math.ceil(exact))


def resolve_epochs(cfg, num_train_images: int | None):
    """``cfg`` with ``train.steps`` (and warmup, lr boundaries, eval interval) from epochs.

    Args:
      cfg: the config tree (``rfcn_tf.config.Config``); returned unchanged when nothing is
        stated in epochs.
      num_train_images: images in the training split (``DatasetInfo.num_examples``); None for
        an endless stream.

    Returns:
      A new ``Config`` (the input is not modified).

    Raises:
      ValueError: epochs with a split of unknown size, a non-positive epoch count, a decay
        boundary at or past the end.
    """
    tcfg = cfg.train
    if not uses_epochs(tcfg):
        return cfg
    if num_train_images is None:
        raise ValueError(
            f"schedules in epochs (train.epochs etc.) need a training split of "
            f"known size; data.source={cfg.data.source!r} split "
            f"{cfg.data.train_split!r} is an endless stream: use train.steps"
        )
    batch = int(tcfg.batch_size)
    changes = {}
    if tcfg.epochs is not None:
        changes["steps"] = epoch_steps(tcfg.epochs, num_train_images, batch)
    steps = changes.get("steps", tcfg.steps)
    if tcfg.warmup_epochs is not None:
        changes["warmup_steps"] = (
            0
            if tcfg.warmup_epochs == 0
            else epoch_steps(
                tcfg.warmup_epochs, num_train_images, batch, what="train.warmup_epochs"
            )
        )
    if tcfg.lr_epochs:
        boundaries = [
            epoch_steps(e, num_train_images, batch, what="train.lr_epochs") for e in tcfg.lr_epochs
        ]
        late = [e for e, b in zip(tcfg.lr_epochs, boundaries) if b >= steps]
        if late:
            raise ValueError(
                f"train.lr_epochs {late} lie at or past the end of training ({steps} steps)"
            )
        changes["lr_steps"] = boundaries
    if tcfg.eval_every_epochs is not None:
        changes["eval_every"] = epoch_steps(
            tcfg.eval_every_epochs, num_train_images, batch, what="train.eval_every_epochs"
        )
    return dataclasses.replace(cfg, train=dataclasses.replace(tcfg, **changes))
