"""data.service: the training pipeline on tf.data service workers, on loopback.

One dispatcher and one worker run in this process; a second worker is a `python -m
rfcn_tf.data.service --worker` subprocess, so the pipeline's graph really crosses a process
boundary (a Python callback inside it would fail there).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import subprocess
import sys
import time

import pytest
from helpers.data_fixtures import data_config

from rfcn_tf.data import service
from rfcn_tf.data.convert import convert_split
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def cluster():
    """(dispatcher address grpc://localhost:PORT, worker subprocess)."""
    dispatcher = service.start_dispatcher(port=0)
    address = dispatcher.target
    local_worker = service.start_worker(dispatcher_address=address, host="localhost")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rfcn_tf.data.service",
            "--worker",
            "--dispatcher-address",
            address.replace("grpc://", ""),
            "--host",
            "localhost",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()  # printed once the worker is registered
    assert "worker registered with" in line, line
    yield address, proc
    proc.kill()
    proc.wait()
    del local_worker, dispatcher


def test_address_and_job_name():
    assert service.parse_address("grpc://localhost:5050") == ("grpc", "localhost:5050")
    for bad in ("localhost:5050", "grpc://host", "http://h:1", "grpc://h:99999"):
        with pytest.raises(
            DataError,
            match=r"data.service must be a tf.data service dispatcher "
            r"address grpc://HOST:PORT, got",
        ):
            service.parse_address(bad)
    cfg = data_config()
    name = service.job_name(cfg, split="train", per_replica_batch=2)
    assert name == service.job_name(data_config(), split="train", per_replica_batch=2)
    assert name != service.job_name(
        dataclasses.replace(cfg, seed=1), split="train", per_replica_batch=2
    )
    with pytest.raises(DataError, match="data.service must be"):
        build_dataset(data_config(service="nope"), split="train", training=True, batch_size=1)


def test_two_workers_share_out_each_epoch(cluster, tmp_path):
    address, proc = cluster
    source = data_config(source="shapes", shapes={"image_size": 48, "num_val": 12})
    convert_split(source, split="validation", out_dir=tmp_path, num_shards=4, progress=False)
    cfg = data_config(
        source="tfrecord",
        tfrecord_pattern=str(tmp_path / "{split}-*.tfrecord"),
        scales=[48],
        max_size=48,
        max_boxes=6,
        service=address,
    )
    dataset = build_dataset(cfg, split="validation", training=True, batch_size=2)
    ids = [int(i) for batch in dataset.take(24) for i in batch["image_ids"].numpy()]
    counts = collections.Counter(ids)
    # 4 epochs of 12 images: every image processed once per epoch, by one worker or the other
    # (a worker running the whole pipeline on its own would repeat its images in lockstep).
    assert sorted(counts) == list(range(12))
    assert max(counts.values()) - min(counts.values()) <= 2, counts
    assert proc.poll() is None  # the subprocess worker is alive


def test_service_feeds_a_training_run(cluster, tmp_path):
    address, _ = cluster
    tiny = [
        "data.shapes.image_size=64",
        "data.scales=[64]",
        "data.max_size=64",
        "data.shapes.num_val=4",
        "data.max_boxes=6",
        "model.backbone.small_widths=[8,16,16,32]",
        "model.anchors.scales=[16.0,32.0]",
        "model.rpn.channels=16",
        "model.head.channels=32",
        "model.rpn.pre_nms_top_n_train=64",
        "model.rpn.post_nms_top_n_train=16",
        "model.roi.batch_size_per_image=16",
        "model.rpn.batch_size_per_image=32",
        "train.batch_size=2",
        "train.log_every=1",
        "train.warmup_steps=1",
        "train.steps=3",
        "train.num_summary_images=0",
        f"data.service={address}",
    ]
    args = [
        sys.executable,
        "-m",
        "rfcn_tf.train",
        "--work-dir",
        str(tmp_path / "run"),
        "--no-progress",
        "--no-eval",
        "--no-export",
    ]
    for override in tiny:
        args += ["--set", override]
    started = time.time()
    result = subprocess.run(
        args, cwd=str(tmp_path), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"total_loss=([0-9.]+)", result.stderr)]
    assert len(losses) >= 3 and all(v > 0 for v in losses), result.stderr[-2000:]
    assert time.time() - started < 600
