"""Exponential moving average of the weights (the TF Object Detection API's
``use_moving_average``; ``train.ema_decay``).

After every optimizer step each averaged variable ``v`` moves its shadow ``s``:

    d = min(decay, (1 + n) / (10 + n))      n = updates so far (tf.train.ExponentialMovingAverage's
    s = d * s + (1 - d) * v                  ``num_updates`` rule: early shadows follow quickly)

The shadows start as copies of the weights when training starts. What is averaged: every
float variable of the model that is trainable when the EMA is built (the frozen stages of a
ResNet are not, and need no average); BatchNorm moving statistics are already averages and are
used as they are.

The EMA weights are used for validation, the best checkpoint and the export: ``swapped()``
puts them into the model for a block and restores the raw weights after; ``copy_to_model()``
keeps them (after training). The shadows and the update count are a ``tf.Module``
(``checkpointable()``), saved in the training checkpoint as ``ema``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import tensorflow as tf

from rfcn_tf.engine.loop import Hook

__all__ = ["EmaHook", "WeightEMA"]


class _Shadows(tf.Module):
    def __init__(self, variables: Sequence[tf.Variable]):
        super().__init__(name="ema")
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.shadows = [
            tf.Variable(
                tf.convert_to_tensor(v), trainable=False, name=f"ema_{i}", aggregation=aggregation
            )
            for i, v in enumerate(variables)
        ]
        self.updates = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="ema_updates", aggregation=aggregation
        )


class WeightEMA:
    """Shadow copies of ``model``'s trainable weights, averaged after each step.

    Build inside ``strategy.scope()`` after the model (the shadows are mirrored like the model).

    Args:
      model: the built model.
      decay: the EMA decay in (0, 1), e.g. 0.9998 (the OD API's default).

    Raises:
      ValueError: ``decay`` outside (0, 1) or a model without trainable float weights.
    """

    def __init__(self, model: keras.Model, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"train.ema_decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.variables = [v for v in model.trainable_variables if tf.as_dtype(v.dtype).is_floating]
        if not self.variables:
            raise ValueError(f"{type(model).__name__} has no trainable float weights to average")
        self._module = _Shadows([_value(v) for v in self.variables])
        self._update_fn = tf.function(self._update)

    @property
    def shadows(self) -> list[tf.Variable]:
        return self._module.shadows

    @property
    def updates(self) -> int:
        return int(self._module.updates.numpy())

    def checkpointable(self) -> tf.Module:
        """The shadows and the update count, for ``tf.train.Checkpoint(ema=...)``."""
        return self._module

    def _update(self):
        n = tf.cast(self._module.updates, tf.float32)
        decay = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))
        for shadow, variable in zip(self.shadows, self.variables):
            value = tf.cast(_value(variable), shadow.dtype)
            shadow.assign(shadow - (1.0 - tf.cast(decay, shadow.dtype)) * (shadow - value))
        self._module.updates.assign_add(1)

    def update(self) -> None:
        """One EMA step (after an optimizer step)."""
        self._update_fn()

    def reset(self) -> None:
        """Shadows := the current weights, no updates yet (training starts from these weights)."""
        self._assign_fn(self.variables, self.shadows)
        self._module.updates.assign(0)

    @staticmethod
    def _assign_fn(sources, targets):
        # Eager on purpose (a few hundred assignments, only at validation and the end): a
        # tf.function would take the target variables as tensors.
        for source, target in zip(sources, targets):
            target.assign(tf.cast(_value(source), target.dtype))

    def copy_to_model(self) -> None:
        """Writes the EMA weights into the model for good (after training)."""
        self._assign_fn(self.shadows, self.variables)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the EMA weights inside the block, its raw weights again after it."""
        raw = [tf.identity(_value(v)) for v in self.variables]
        self._assign_fn(self.shadows, self.variables)
        try:
            yield
        finally:
            self._assign_fn(raw, self.variables)


def _value(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


class EmaHook(Hook):
    """Updates ``ema`` after every step (put it before the checkpoint hook's save)."""

    def __init__(self, ema: WeightEMA):
        self.ema = ema

    def after_step(self, loop, step, logs) -> None:
        self.ema.update()
