"""The tf.distribute strategy behind training, chosen by one flag (``train.strategy``).

- ``default``: TensorFlow's default strategy (no distribution: one device, the first GPU when
  there is one, else the CPU). The train step code path is the same as with the others.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the local GPUs (or the devices given):
  one replica per device, variables mirrored, gradients all-reduced (sum) every step.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across processes/machines
  described by the ``TF_CONFIG`` environment variable (``{"cluster": {"worker": [...]},
  "task": {"type": "worker", "index": i}}``); every worker runs the same command.

Only the chief (worker 0) writes TensorBoard summaries, evaluation and exports; all workers take
part in checkpoint saves (collective reads), non-chief workers into a throw-away folder
(``write_dir``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import tensorflow as tf

__all__ = ["STRATEGIES", "build_strategy", "is_chief", "task_id", "write_dir"]

logger = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker")


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}): {raw!r}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw!r}")
    return value


def build_strategy(
    name: str = "default", *, devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
    """Builds the distribution strategy named by ``name``.

    Args:
      name: ``default`` | ``mirrored`` | ``multi_worker`` (see the module docstring).
      devices: ``mirrored`` only: device names (``["/gpu:0", "/gpu:1"]`` or logical CPUs
        ``["/cpu:0", "/cpu:1"]``); None uses every local GPU (the CPU when there is none).

    Returns:
      The strategy. Build the model and optimizer inside ``strategy.scope()``.

    Raises:
      ValueError: an unknown ``name``; ``multi_worker`` without a ``TF_CONFIG`` naming a worker
        cluster and this task; ``devices`` given for another strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    if devices is not None and name != "mirrored":
        raise ValueError(
            f"devices={list(devices)} only applies to the 'mirrored' strategy, "
            f"got strategy '{name}'"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
        logger.info(
            "MirroredStrategy over %d replicas: %s",
            strategy.num_replicas_in_sync,
            list(strategy.extended.worker_devices),
        )
        return strategy
    config = _tf_config()
    cluster = config.get("cluster", {})
    task = config.get("task", {})
    if not cluster.get("worker") or "index" not in task:
        raise ValueError(
            "the 'multi_worker' strategy needs TF_CONFIG with cluster.worker (a list of "
            'host:port) and task.index, e.g. TF_CONFIG=\'{"cluster": {"worker": '
            '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
            f"; got TF_CONFIG={os.environ.get('TF_CONFIG', '')!r}"
        )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    logger.info(
        "MultiWorkerMirroredStrategy: worker %s of %d, %d replicas in sync",
        task.get("index"),
        len(cluster["worker"]),
        strategy.num_replicas_in_sync,
    )
    return strategy


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index (0 for single-process strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0
    return int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the process that writes summaries, evaluation, exports and the real checkpoints.

    Worker 0 is the chief (a cluster with an explicit "chief" task makes that task the chief).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type = resolver.task_type
    if task_type == "chief":
        return True
    if task_type == "worker":
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        return not has_chief and int(resolver.task_id or 0) == 0
    return False


def write_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes files meant for ``directory``.

    The chief writes into ``directory``; other workers into ``directory/.worker_<id>`` (they must
    take part in collective saves, but their copy is discarded afterwards).
    """
    if is_chief(strategy):
        return directory
    return os.path.join(directory, f".worker_{task_id(strategy)}")
