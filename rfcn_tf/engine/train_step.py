"""One distributed training step: data -> losses -> gradient step, nothing else.

Checkpoints, summaries, logging and the NaN guard are hooks of the loop (``loop.py``); the step
returns the loss dict and the loop decides what to do with it.

Per replica (inside ``strategy.run``), losses come back as a dict with fixed names, the step sums them, divides
by the number of replicas and applies the gradients:

    losses = model.compute_losses(features, training=True, include=include)
    loss = losses["total_loss"]
    grads = d(loss / num_replicas) / d(variables)   # (scaled for mixed precision)
    optimizer.apply_gradients(zip(grads, variables))  # sums grads over replicas, then updates

Dividing by the number of replicas makes the all-reduced SUM of the gradients equal to the
gradient of the mean per-replica loss, so N replicas with a per-replica batch of B/N take the
same step as one device with batch B (when the model's losses are per-image means with fixed
sample counts, as ours are).

Weight decay lives in the optimizer (``optimizer.py``); Keras ``add_loss`` regularizers are not
collected (``model.losses`` is only reset by ``Model.__call__``, and ``compute_losses`` need
not go through it, so stale values could leak in).

Shape shorthand: B per-replica batch; features follow docs/INTERFACES.md ("Batched features").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

__all__ = ["TOTAL_LOSS", "build_train_step"]

TOTAL_LOSS = "total_loss"


def build_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    *,
    variables: Sequence[keras.Variable],
    include: Sequence[str] = ("rpn", "rfcn"),
    prepare_features: Callable[[dict], dict] | None = None,
) -> Callable[[object], dict]:
    """Builds the ``tf.function`` that runs one synchronous step on every replica.

    Args:
      model: has ``compute_losses(features, *, training, include) -> dict`` of float32 scalars
        with a ``total_loss`` entry (``RFCN`` does; test stand-ins mimic it).
      optimizer: built over ``variables`` inside ``strategy.scope()`` (``build_optimizer``).
        A ``LossScaleOptimizer`` is detected and its ``scale_loss`` used.
      strategy: the strategy the model and optimizer were built under.
      variables: the variables to update (the scheme's stage decides: everything for joint
        training, subsets for the 4-step alternating scheme). Others stay frozen.
      include: loss groups passed to ``compute_losses`` (``("rpn",)``, ``("rfcn",)`` or both).
      prepare_features: optional per-replica ``features -> features`` run before the tape (no
        gradient flows through it), e.g. adding proposals from a frozen RPN copy.

    Returns:
      ``step(iterator) -> dict[str, tf.Tensor]``: pulls one per-replica batch from a
      distributed ``iterator`` (``iter(strategy.distribute_datasets_from_function(...))``) and
      returns each loss averaged over replicas (float32 scalars, identical on every worker).

    Raises:
      ValueError: ``variables`` is empty, or (at trace time) the loss dict lacks ``total_loss``.
    """
    variables = list(variables)
    if not variables:
        raise ValueError("build_train_step got no variables to train")
    include = tuple(include)
    num_replicas = strategy.num_replicas_in_sync
    scales_loss = hasattr(optimizer, "scale_loss") and hasattr(optimizer, "inner_optimizer")

    def replica_step(features: dict) -> dict:
        if prepare_features is not None:
            features = prepare_features(features)
        with tf.GradientTape() as tape:
            losses = dict(model.compute_losses(features, training=True, include=include))
            if TOTAL_LOSS not in losses:
                raise ValueError(
                    f"compute_losses returned no '{TOTAL_LOSS}': keys {sorted(losses)}"
                )
            total = tf.cast(losses[TOTAL_LOSS], tf.float32)
            replica_loss = total / num_replicas
            if scales_loss:
                replica_loss = optimizer.scale_loss(replica_loss)
        grads = tape.gradient(replica_loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return {name: tf.cast(value, tf.float32) / num_replicas for name, value in losses.items()}

    @tf.function(autograph=False)
    def step(iterator) -> Mapping[str, tf.Tensor]:
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in per_replica.items()
        }

    return step
