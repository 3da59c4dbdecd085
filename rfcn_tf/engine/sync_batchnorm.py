"""Synchronized BatchNorm across replicas (``train.sync_batchnorm``).

R-FCN (sec. 3/4) trains with one image per GPU and FROZEN BatchNorm (the ResNet stages use
their ImageNet statistics: ``freeze_batchnorm``). A backbone whose BatchNorm does train (the
small backbone; ResNet with ``freeze_batchnorm=False``) normalizes each replica's batch on its
own; with ``train.sync_batchnorm: true`` the batch mean and variance are all-reduced over the
replicas instead, so R replicas of B/R images each normalize like one device with B images.

This is Keras' ``BatchNormalization(synchronized=True)``: the layer reads its ``synchronized``
flag at call time (``keras.ops.moments(..., synchronized=...)``, a cross-replica all-reduce
in the replica context), so setting it on the built model's BatchNorm layers is the same as
building them with it; the model builders need no argument for it. Layers in inference mode
(frozen ones, and every layer at test time) use their moving statistics either way.
"""

from __future__ import annotations

import logging

import keras

__all__ = ["batchnorm_layers", "synchronize_batchnorm"]

logger = logging.getLogger("rfcn_tf.train")


def batchnorm_layers(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every ``BatchNormalization`` layer inside ``model`` (nested models included)."""
    found, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "_layers", []) or [])
    return found


def synchronize_batchnorm(
    model: keras.layers.Layer, *, num_replicas: int, per_replica_batch: int
) -> int:
    """Sets ``synchronized=True`` on the model's BatchNorm layers; returns how many.

    With one replica there is nothing to synchronize: nothing changes (0 is returned). With
    one image per replica the statistics of a replica are those of one image; synchronizing
    still pools the replicas (a note is logged, as the paper froze BN in that setting).
    """
    if num_replicas <= 1:
        logger.info("train.sync_batchnorm: one replica, nothing to synchronize")
        return 0
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.synchronized = True
    trained = sum(1 for layer in layers if layer.trainable)
    logger.info(
        "train.sync_batchnorm: %d BatchNorm layers (%d trainable) synchronized over %d "
        "replicas of %d image(s)",
        len(layers),
        trained,
        num_replicas,
        per_replica_batch,
    )
    if per_replica_batch == 1:
        logger.info(
            "train.sync_batchnorm with 1 image per replica: R-FCN froze BatchNorm in "
            "this setting (model freeze options)"
        )
    return len(layers)
