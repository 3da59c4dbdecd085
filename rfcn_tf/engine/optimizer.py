"""The optimizer of R-FCN training: SGD with momentum, weight decay, warmup and decay, clipping.

R-FCN sec. 3 (Training): "weight decay of 0.0005 and a momentum of 0.9", learning rate 0.001
then 0.0001 (a step schedule); this module adds the usual linear warmup, a cosine alternative,
global-norm gradient clipping and optional mixed precision.

Numeric choices (documented here because they differ from ``keras.optimizers.SGD(weight_decay=)``):

- Weight decay is the paper's (Caffe's) L2 decay: ``wd * w`` is added to the gradient and so
  goes through momentum, ``v = m v - lr (g + wd w); w += v``. Keras' own ``weight_decay`` is
  decoupled (``w -= lr wd w`` outside momentum), whose steady-state effect is ``1 - momentum``
  (10x) weaker at the same coefficient, so the paper's 0.0005 would not mean the same thing.
- BatchNorm scales/offsets and biases (every variable of rank <= 1) are excluded from the decay
  through Keras' ``exclude_from_weight_decay``.
- Clipping uses the global norm of the gradient AFTER the cross-replica sum, so N replicas clip
  exactly like one device with the same global batch (Keras clips each replica's partial
  gradient before its all-reduce, which would not).

Shape shorthand: none (scalars and variable lists only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

__all__ = [
    "DetectionSGD",
    "WarmupDecaySchedule",
    "build_lr_schedule",
    "build_optimizer",
    "configure_mixed_precision",
    "inner_optimizer",
    "no_decay_variables",
]

SCHEDULES = ("cosine", "step", "constant")


@keras.saving.register_keras_serializable(package="rfcn_tf")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then a step or cosine decay of the learning rate.

    ``lr(step) = base_lr * main(step) * warm(step)`` where ``step`` counts applied updates
    (the optimizer's ``iterations``, 0-based) and

    - ``warm(step) = warmup_factor + (1 - warmup_factor) * step / warmup_steps`` while
      ``step < warmup_steps``, else 1;
    - ``main(step)`` is ``decay ** (number of boundaries <= step)`` for ``step``;
      ``final_factor + (1 - final_factor) * (1 + cos(pi * min(step, total_steps) / total_steps)) / 2``
      for ``cosine``; 1 for ``constant``.

    Args:
      base_lr: peak learning rate (float > 0).
      total_steps: steps of the run (the cosine's period; also bounds ``boundaries``).
      schedule: ``cosine`` | ``step`` | ``constant``.
      boundaries: ``step``: increasing step indices where the rate is multiplied by ``decay``.
      decay: ``step``: factor applied at each boundary (R-FCN: 0.1, 0.001 -> 0.0001).
      warmup_steps: length of the linear warmup (0 = none).
      warmup_factor: fraction of the rate at step 0.
      final_factor: ``cosine``: fraction of ``base_lr`` reached at ``total_steps``.

    Example:
      >>> s = WarmupDecaySchedule(base_lr=0.1, total_steps=100, schedule="step", boundaries=[50])
      >>> float(s(60))  # 0.01
    """

    def __init__(
        self,
        *,
        base_lr: float,
        total_steps: int,
        schedule: str = "cosine",
        boundaries: Sequence[int] = (),
        decay: float = 0.1,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        final_factor: float = 0.0,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
        if not base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        boundaries = [int(b) for b in boundaries]
        if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in [0, 1], got {warmup_factor}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.schedule = schedule
        self.boundaries = list(boundaries)  # a copy: never the caller's list
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.final_factor = float(final_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.schedule == "step":
            passed = tf.zeros([], tf.float32)
            for boundary in self.boundaries:
                passed += tf.cast(step >= float(boundary), tf.float32)
            main = tf.pow(tf.constant(self.decay, tf.float32), passed)
        elif self.schedule == "cosine":
            progress = tf.minimum(step, float(self.total_steps)) / float(self.total_steps)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            main = self.final_factor + (1.0 - self.final_factor) * cosine
        else:
            main = tf.ones([], tf.float32)
        if self.warmup_steps > 0:
            ramp = self.warmup_factor + (1.0 - self.warmup_factor) * step / float(self.warmup_steps)
            warm = tf.where(step < float(self.warmup_steps), ramp, 1.0)
        else:
            warm = tf.ones([], tf.float32)
        return self.base_lr * main * warm

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "schedule": self.schedule,
            "boundaries": list(self.boundaries),
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "final_factor": self.final_factor,
        }


def build_lr_schedule(
    *,
    base_lr: float,
    total_steps: int,
    schedule: str = "cosine",
    boundaries: Sequence[int] = (),
    decay: float = 0.1,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    final_factor: float = 0.0,
) -> WarmupDecaySchedule:
    """Keyword-only builder of :class:`WarmupDecaySchedule` (see there for the arguments).

    Raises:
      ValueError: a boundary outside ``(0, total_steps)`` (it would never or always apply).
    """
    for boundary in boundaries:
        if not 0 < boundary < total_steps:
            raise ValueError(
                f"lr boundary {boundary} is outside (0, total_steps={total_steps}); "
                f"boundaries: {list(boundaries)}"
            )
    return WarmupDecaySchedule(
        base_lr=base_lr,
        total_steps=total_steps,
        schedule=schedule,
        boundaries=boundaries,
        decay=decay,
        warmup_steps=warmup_steps,
        warmup_factor=warmup_factor,
        final_factor=final_factor,
    )


@keras.saving.register_keras_serializable(package="rfcn_tf")
class DetectionSGD(keras.optimizers.SGD):
    """SGD with momentum, coupled (L2, Caffe-style) weight decay and post-all-reduce clipping.

    The update of one variable ``w`` with the summed (all-replica) gradient ``g``:
    ``g <- clip_by_global_norm(g, clip_global_norm)``, then ``g <- g + weight_decay * w`` unless
    ``w`` is excluded (``exclude_from_weight_decay``), then Keras' SGD momentum update
    ``v = momentum * v - lr * g; w += v``.

    Args:
      learning_rate: float or a ``LearningRateSchedule``.
      momentum: float in [0, 1).
      weight_decay: L2 coefficient (float >= 0; 0 or None = off).
      clip_global_norm: clip the global gradient norm to this (None = off).
      name: optimizer name.

    Call ``exclude_from_weight_decay(var_list=...)`` before ``build``; ``build_optimizer`` does.
    """

    def __init__(
        self,
        learning_rate=0.01,
        *,
        momentum: float = 0.9,
        weight_decay: float | None = None,
        clip_global_norm: float | None = None,
        name: str = "detection_sgd",
        **kwargs,
    ):
        if clip_global_norm is not None and not clip_global_norm > 0:
            raise ValueError(f"clip_global_norm must be > 0 or None, got {clip_global_norm}")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            weight_decay=weight_decay or None,
            name=name,
            **kwargs,
        )
        self.clip_global_norm = clip_global_norm

    def _apply_weight_decay(self, variables):
        # The decay is folded into the gradient in _backend_update_step (coupled L2).
        return

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        # 1. Sum over replicas (a no-op outside tf.distribute replica contexts).
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        grads = [
            tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g, _ in grads_and_vars
        ]
        # 2. Clip the global gradient, identically on every replica.
        if self.clip_global_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_global_norm)
        # 3. Coupled L2 weight decay (R-FCN sec. 3 / Caffe), except on excluded variables.
        if self.weight_decay:
            grads = [
                g + tf.cast(self.weight_decay, v.dtype) * v if self._use_weight_decay(v) else g
                for g, v in zip(grads, variables)
            ]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step,
            self._distribution_strategy,
            list(zip(grads, variables)),
            learning_rate,
        )

    def get_config(self):
        config = super().get_config()
        config["clip_global_norm"] = self.clip_global_norm
        return config


def no_decay_variables(variables: Sequence[keras.Variable]) -> list[keras.Variable]:
    """The variables weight decay must skip: biases and BatchNorm gamma/beta (rank <= 1)."""
    return [v for v in variables if len(v.shape) <= 1]


def configure_mixed_precision(enabled: bool) -> str:
    """Sets Keras' global dtype policy before the model is built; returns the policy's name.

    ``enabled`` on a machine with a GPU: ``mixed_float16`` (compute float16, variables float32).
    Without a GPU, float16 math is slow or unsupported on CPUs, so the policy stays ``float32``
    and a warning says so (the loss-scaling optimizer is still used, harmlessly).
    """
    if not enabled:
        keras.mixed_precision.set_dtype_policy("float32")
        return "float32"
    if not tf.config.list_physical_devices("GPU"):
        import logging

        logging.getLogger(__name__).warning(
            "train.mixed_precision=true but no GPU is visible: computing in float32"
        )
        keras.mixed_precision.set_dtype_policy("float32")
        return "float32"
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    return "mixed_float16"


def build_optimizer(
    *,
    variables: Sequence[keras.Variable],
    learning_rate,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    loss_scaling: bool = False,
) -> keras.optimizers.Optimizer:
    """Builds (and ``build``s, over ``variables``) the training optimizer.

    Call inside ``strategy.scope()`` so its slot variables are mirrored like the model's.

    Args:
      variables: the variables this optimizer updates (all trainable ones, or a stage's subset
        in the alternating scheme). Weight decay skips those of rank <= 1 (biases, BN).
      learning_rate: float or ``LearningRateSchedule`` (``build_lr_schedule``).
      momentum: SGD momentum (R-FCN: 0.9).
      weight_decay: L2 coefficient (R-FCN: 0.0005); 0 = off.
      clip_norm: global-norm clipping threshold; None = off.
      loss_scaling: wrap in ``keras.optimizers.LossScaleOptimizer`` (dynamic loss scale) for
        mixed_float16 training; the train step scales the loss with ``optimizer.scale_loss``.

    Returns:
      ``DetectionSGD``, or a ``LossScaleOptimizer`` around it.

    Raises:
      ValueError: empty ``variables``, or invalid hyper-parameters (see ``DetectionSGD``).
    """
    variables = list(variables)
    if not variables:
        raise ValueError("build_optimizer got no variables to optimize")
    optimizer = DetectionSGD(
        learning_rate=learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        clip_global_norm=clip_norm,
    )
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_list=no_decay_variables(variables))
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that owns the schedule (unwraps a ``LossScaleOptimizer``)."""
    return getattr(optimizer, "inner_optimizer", optimizer)
