"""Exact data resume: after a resume the input stream continues where it stopped.

Two ways (``train.data_resume``):

- ``iterator``: the distributed ``tf.data`` iterator is part of the training checkpoint
  (``tf.train.Checkpoint(iterator=...)``); resuming restores its position and buffers at once.
  Its size is the pipeline's buffered state: about 1 MB for the shapes stream (prefetched
  batches), but with ``data.cache`` the cached decoded images go into every checkpoint (about
  400 MB for BCCD), and in a multi-worker run the chief's checkpoint holds the chief's
  iterator only (its shard), so neither can use it.
- ``skip``: a fresh pipeline (same seeds) drops the batches the finished steps consumed,
  ``steps * replicas / input pipelines`` per pipeline, before the first step. Costs the
  preprocessing of those batches once (about 4 ms per 256-pixel shapes image on one core).
- ``auto`` (default): ``iterator`` when the pipeline allows it (no ``data.cache``, not
  multi-worker), else ``skip``. ``none``: a fresh stream (the first batches again).

A checkpoint written without the iterator (another mode, an older run) resumes by ``skip``.
Either way the batches are the same as an uninterrupted run's only when the pipeline's element
order is deterministic (``data.deterministic: true``; its parallel map otherwise lets the
order vary slightly between runs anyway).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

__all__ = ["DATA_RESUME_MODES", "checkpoint_has_iterator", "choose_data_resume",
           "skipping_dataset_fn"]

DATA_RESUME_MODES = ("auto", "iterator", "skip", "none")


def choose_data_resume(mode: str, *, cached: bool, strategy: tf.distribute.Strategy) -> str:
    """``auto`` -> ``iterator`` or ``skip`` (module docstring); other modes are kept.

    Raises:
      ValueError: an unknown mode, or ``iterator`` under multi-worker training.
    """
    if mode not in DATA_RESUME_MODES:
        raise ValueError(f"train.data_resume must be one of {', '.join(DATA_RESUME_MODES)}, "
                         f"got {mode!r}")
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if mode == "iterator" and multi_worker:
        raise ValueError("train.data_resume=iterator does not work with the multi_worker "
                         "strategy (the checkpoint holds the chief's iterator only); use skip")
    if mode != "auto":
        return mode
    return "skip" if cached or multi_worker else "iterator"


def checkpoint_has_iterator(prefix: str) -> bool:
    """True when the checkpoint at ``prefix`` holds a saved input iterator."""
    names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    return any(name.startswith("iterator/") for name in names)


def skipping_dataset_fn(dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
                        steps_done: int) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """``dataset_fn`` whose pipelines first drop the batches of ``steps_done`` steps."""
    if steps_done <= 0:
        return dataset_fn

    def skipping(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_pipeline = max(1, context.num_replicas_in_sync // max(1, context.num_input_pipelines))
        return dataset_fn(context).skip(int(steps_done) * per_pipeline)

    return skipping
