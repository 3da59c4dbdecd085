"""Synchronized BatchNorm and epoch schedules on one device and on 2 replicas (Mirrored, 2
logical CPUs; each configuration in its own process, see engine_replicas_worker.py).

- ``train.sync_batchnorm``: 2 replicas of 2 images with synchronized BatchNorm take the step
  of one device with 4 images (the batch statistics are all-reduced); without it each replica
  normalizes its own 2 images and the weights differ.
- ``train.epochs``: the derived step count depends on the global batch only, and those steps
  read every training image exactly ``epochs`` times on 1 and on 2 replicas; warmup and decay
  boundaries stated in epochs become steps of the same epochs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

from helpers.data_fixtures import make_voc  # noqa: E402

TRAIN_IDS = ["img_a", "img_b", "img_c", "img_d", "img_e", "img_f"]


def _voc(root):
    images = {
        name: (32 + 4 * i, 40, [("dog", 2, 3, 20, 25, 0)]) for i, name in enumerate(TRAIN_IDS)
    }
    return make_voc(root, images, {"train": TRAIN_IDS})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    voc = _voc(root / "voc")
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(
            [ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    env.pop("TF_CONFIG", None)
    out = {}
    procs = {}
    for mode in ("single", "mirrored"):
        procs[mode] = subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "engine_replicas_worker.py"),
                mode,
                str(root / f"{mode}.npz"),
                str(voc),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for mode, proc in procs.items():
        _, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"{mode} worker failed:\n{stderr[-4000:]}"
        out[mode] = dict(np.load(root / f"{mode}.npz"))
    return out


def _bn(result, kind):
    return [
        result[k]
        for k in sorted(
            (k for k in result if k.startswith(f"bn_{kind}/")), key=lambda k: int(k.split("/")[1])
        )
    ]


def test_sync_batchnorm_on_two_replicas_equals_one_device(results):
    single = _bn(results["single"], "sync")
    np.testing.assert_allclose(
        np.concatenate([w.ravel() for w in _bn(results["single"], "local")]),
        np.concatenate([w.ravel() for w in single]),
        atol=1e-6,
    )
    for got, want in zip(_bn(results["mirrored"], "sync"), single):
        np.testing.assert_allclose(got, want, atol=1e-4)
    local = _bn(results["mirrored"], "local")
    assert max(np.abs(a - b).max() for a, b in zip(local, single)) > 1e-3


def test_epochs_derive_the_same_steps_and_read_each_image_epochs_times(results):
    # 6 images, global batch 2: 3 steps per epoch; 2 epochs = 6 steps; warmup 0.5 epoch =
    # ceil(1.5) = 2 steps; the decay at epoch 1.5 is step ceil(4.5) = 5.
    for mode in ("single", "mirrored"):
        np.testing.assert_array_equal(results[mode]["epoch_steps"], [6, 2, 5], err_msg=mode)
        ids, counts = np.unique(results[mode]["epoch_ids"], return_counts=True)
        assert len(ids) == len(TRAIN_IDS) and (counts == 2).all(), (mode, ids, counts)
