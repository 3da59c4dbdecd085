"""Tests for rfcn_tf.engine.strategy (the multi-device paths run in test_engine_distribution)."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from rfcn_tf.engine.strategy import build_strategy, is_chief, task_id, write_dir


def test_default_strategy_is_tensorflows_default():
    strategy = build_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy) and task_id(strategy) == 0
    assert write_dir("/x/ckpt", strategy) == "/x/ckpt"


def test_mirrored_on_one_cpu():
    strategy = build_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1 and is_chief(strategy)


def test_errors_name_the_culprit(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy 'tpu'; choose one of default, mirrored"):
        build_strategy("tpu")
    with pytest.raises(
        ValueError, match="only applies to the 'mirrored' strategy, got strategy 'default'"
    ):
        build_strategy("default", devices=["/cpu:0"])
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG with cluster.worker"):
        build_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        build_strategy("multi_worker")


class _FakeResolver:
    def __init__(self, task_type, index, cluster):
        self.task_type, self.task_id, self._cluster = task_type, index, cluster

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._cluster)


class _FakeStrategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


def test_chief_rules_and_worker_write_dirs():
    workers = {"worker": ["a:1", "b:1"]}
    chief = _FakeStrategy(_FakeResolver("worker", 0, workers))
    other = _FakeStrategy(_FakeResolver("worker", 1, workers))
    assert is_chief(chief) and not is_chief(other)
    assert write_dir("/w/ckpt", chief) == "/w/ckpt"
    assert write_dir("/w/ckpt", other) == os.path.join("/w/ckpt", ".worker_1")
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert is_chief(_FakeStrategy(_FakeResolver("chief", 0, with_chief)))
    assert not is_chief(_FakeStrategy(_FakeResolver("worker", 0, with_chief)))
