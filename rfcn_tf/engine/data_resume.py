"""Exact data resume: after a resume the input stream continues where it stopped.

Two ways (``train.data_resume``):

- ``iterator``: the distributed ``tf.data`` iterator is part of the training checkpoint
  (``tf.train.Checkpoint(iterator=...)``); resuming restores its position and buffers at once.
  Its size is the pipeline's buffered state: about 1 MB for the shapes stream (prefetched
  batches), but with ``data.cache`` the cached decoded images go into every checkpoint (about
  400 MB for BCCD); in a multi-worker run the chief's checkpoint would hold the chief's
  iterator only (its shard); and only the default strategy's iterator can be saved (TF 2.21:
  a ``DistributedIterator`` of Mirrored/OneDevice/MultiWorker is not trackable). Those use
  ``skip``.
- ``skip``: a fresh pipeline (same seeds) drops the batches the finished steps consumed,
  ``steps * replicas / input pipelines`` per pipeline, before the first step. Costs the
  preprocessing of those batches once (about 4 ms per 256-pixel shapes image on one core).
- ``auto`` (default): ``iterator`` when the pipeline allows it (no ``data.cache``, the
  default strategy), else ``skip``. ``none``: a fresh stream (the first batches again).

A checkpoint written without the iterator (another mode, an older run) resumes by ``skip``.
Either way the batches are the same as an uninterrupted run's only when the pipeline's element
order is deterministic (``data.deterministic: true``; its parallel map otherwise lets the
order vary slightly between runs anyway).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

__all__ = [
    "DATA_RESUME_MODES",
    "checkpoint_has_iterator",
    "choose_data_resume",
    "iterator_checkpointable",
    "skipping_dataset_fn",
]

DATA_RESUME_MODES = ("auto", "iterator", "skip", "none")


def iterator_checkpointable(strategy: tf.distribute.Strategy) -> bool:
    """True when ``strategy``'s distributed iterators can go into a ``tf.train.Checkpoint``."""
    from tensorflow.python.trackable.base import Trackable

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False  # the chief's checkpoint would hold only its own shard's iterator
    probe = strategy.distribute_datasets_from_function(lambda _: tf.data.Dataset.range(1))
    return isinstance(iter(probe), Trackable)


def choose_data_resume(mode: str, *, cached: bool, strategy: tf.distribute.Strategy) -> str:
    """``auto`` -> ``iterator`` or ``skip`` (module docstring); other modes are kept.

    Raises:
      ValueError: an unknown mode, or ``iterator`` where the iterator cannot be saved.
    """
    if mode not in DATA_RESUME_MODES:
        raise ValueError(
            f"train.data_resume must be one of {', '.join(DATA_RESUME_MODES)}, got {mode!r}"
        )
    if mode not in ("auto", "iterator"):
        return mode
    savable = iterator_checkpointable(strategy)
    if mode == "iterator" and not savable:
        raise ValueError(
            f"train.data_resume=iterator needs the default strategy (the "
            f"{type(strategy).__name__} iterator cannot be saved in a checkpoint); "
            f"use skip or auto"
        )
    return "iterator" if savable and not cached else "skip"


def checkpoint_has_iterator(prefix: str) -> bool:
    """True when the checkpoint at ``prefix`` holds a saved input iterator."""
    names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    return any(name.startswith("iterator/") for name in names)


def skipping_dataset_fn(
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset], steps_done: int
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """``dataset_fn`` whose pipelines first drop the batches of ``steps_done`` steps."""
    if steps_done <= 0:
        return dataset_fn

    def skipping(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_pipeline = max(1, context.num_replicas_in_sync // max(1, context.num_input_pipelines))
        return dataset_fn(context).skip(int(steps_done) * per_pipeline)

    return skipping
