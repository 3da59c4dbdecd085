"""The host-side training loop: call the step, check the losses, hand them to the hooks.

The loop owns no policy: checkpoints, TensorBoard summaries, the progress bar and log lines are
hooks (``callbacks.py``), in the detectron2 manner. Its one built-in rule is the NaN guard: a
non-finite loss raises :class:`NonFiniteLossError` naming the step and the loss dict BEFORE any
hook sees that step, so no checkpoint is written from the diverged weights and the last good
checkpoint stays intact.

Step numbering: ``step_counter`` holds the number of completed steps (it is saved in every
checkpoint); hooks receive the step just completed, 1-based (``step == 1`` after the first
update), so "checkpoint every N steps" saves at N, 2N, ...
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

__all__ = ["Hook", "NonFiniteLossError", "TrainLoop"]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; carries ``step`` (int) and ``losses`` (dict of floats)."""

    def __init__(self, message: str, *, step: int, losses: Mapping[str, float]):
        super().__init__(message)
        self.step = step
        self.losses = dict(losses)


class Hook:
    """Base class of loop hooks; override the methods you need.

    ``logs`` holds every loss of the step (floats, replica means), ``learning_rate`` (the rate
    the step used), ``step_time`` (seconds, host wall time of the step call),
    ``images_per_sec`` (global batch / step_time) and ``global_batch_size``.
    """

    def on_train_begin(self, loop: TrainLoop) -> None:
        """Before the first step of this loop (``loop.start_step`` steps already done)."""

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        """After step ``step`` (1-based, global) completed with finite losses."""

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        """After the last step of the loop, when it ended normally."""

    def on_train_failed(self, loop: TrainLoop, error: BaseException) -> None:
        """When a step or a hook raised; nothing must be saved from the current weights."""


class TrainLoop:
    """Runs ``step_fn`` until ``step_counter`` reaches ``end_step`` or a hook requests a stop.

    Args:
      step_fn: ``step_fn(iterator) -> dict[str, scalar tensor]`` (``build_train_step``).
      iterator: the distributed iterator the step pulls batches from.
      step_counter: int64 scalar ``tf.Variable``, completed steps (restored from a checkpoint
        when resuming); incremented here after each step.
      end_step: stop once ``step_counter == end_step`` (global step, all stages counted).
      global_batch_size: images per step over all replicas (for images/s).
      learning_rate_fn: returns the learning rate the next step will use (float); None = omit.
      hooks: called in order (put checkpointing before summaries to save as early as possible).
      name: a label for messages (the scheme's stage name).
      checkpoint_dir: named in the NaN guard's message (where the last good checkpoint is).
    """

    def __init__(
        self,
        *,
        step_fn: Callable[[object], Mapping[str, tf.Tensor]],
        iterator,
        step_counter: tf.Variable,
        end_step: int,
        global_batch_size: int,
        learning_rate_fn: Callable[[], float] | None = None,
        hooks: Sequence[Hook] = (),
        name: str = "train",
        checkpoint_dir: str | None = None,
    ):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        self.step_fn = step_fn
        self.iterator = iterator
        self.step_counter = step_counter
        self.end_step = int(end_step)
        self.global_batch_size = int(global_batch_size)
        self.learning_rate_fn = learning_rate_fn
        self.hooks = list(hooks)
        self.name = name
        self.checkpoint_dir = checkpoint_dir
        self.start_step = int(step_counter.numpy())
        self.last_logs: dict[str, float] = {}
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Ends the loop after the current hook round (early stop); ``on_train_end`` still runs.

        Every process of a multi-worker run must request the same stop at the same step.
        """
        self.stop_reason = str(reason)

    @property
    def step(self) -> int:
        """Completed steps so far (global)."""
        return int(self.step_counter.numpy())

    def _non_finite(self, step: int, losses: Mapping[str, float]) -> NonFiniteLossError:
        bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
        formatted = ", ".join(f"{k}={v:.6g}" for k, v in sorted(losses.items()))
        where = ""
        if self.checkpoint_dir:
            latest = tf.train.latest_checkpoint(self.checkpoint_dir)
            where = (
                f" The last good checkpoint is {latest} (not overwritten)."
                if latest
                else " No checkpoint was written yet."
            )
        return NonFiniteLossError(
            f"non-finite loss at step {step} ({self.name}): {', '.join(bad)} in "
            f"{{{formatted}}}. Training stopped.{where} Lower train.lr, raise "
            f"train.warmup_steps or set train.clip_norm.",
            step=step,
            losses=losses,
        )

    def run(self) -> dict[str, float]:
        """Trains to ``end_step``; returns the logs of the last step (empty if none ran).

        Raises:
          NonFiniteLossError: a loss was NaN/Inf (the step number and loss dict in the message).
        """
        step = self.step
        self.start_step = step
        self.stop_reason = None
        try:
            for hook in self.hooks:
                hook.on_train_begin(self)
            while step < self.end_step and self.stop_reason is None:
                learning_rate = self.learning_rate_fn() if self.learning_rate_fn else None
                started = time.perf_counter()
                losses = {k: float(v) for k, v in self.step_fn(self.iterator).items()}
                step_time = time.perf_counter() - started
                step += 1
                if not all(math.isfinite(v) for v in losses.values()):
                    raise self._non_finite(step, losses)
                self.step_counter.assign(step)
                logs = dict(losses)
                if learning_rate is not None:
                    logs["learning_rate"] = float(learning_rate)
                logs["step_time"] = step_time
                logs["images_per_sec"] = self.global_batch_size / max(step_time, 1e-9)
                logs["global_batch_size"] = float(self.global_batch_size)
                self.last_logs = logs
                for hook in self.hooks:
                    hook.after_step(self, step, logs)
        except BaseException as error:
            for hook in self.hooks:
                try:
                    hook.on_train_failed(self, error)
                except Exception:  # a failing hook must not mask the original error
                    pass
            raise
        for hook in self.hooks:
            hook.on_train_end(self, self.last_logs)
        return self.last_logs
