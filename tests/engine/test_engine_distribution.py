"""Distributed training equals one device with the same global batch (losses and weights).

The configurations run in ``engine_dist_worker.py`` processes (logical CPU devices must be set
before TensorFlow initializes; multi-worker needs 2 processes; the one-device references share
one process): 3 steps of the real train step
(DetectionSGD with weight decay, momentum, warmup+cosine, and a clip threshold small enough to
be active) on the stand-in detector, global batch 2; and 4 steps of the real small R-FCN
detector under MirroredStrategy and on 2 worker processes (deterministic settings: see
engine_real_model.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "engine_dist_worker.py")
ROOT = os.path.dirname(os.path.dirname(HERE))


def _env(**extra):
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")]
    )
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(mode, folder, **runs):
    """One worker process training each of ``runs`` (name -> MODEL spec) in turn."""
    args = []
    for name, spec in runs.items():
        args += [str(folder / f"{name}.npz"), spec]
    proc = subprocess.run(
        [sys.executable, WORKER, mode, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{mode} worker failed:\n{proc.stderr[-4000:]}"
    return {name: dict(np.load(folder / f"{name}.npz")) for name in runs}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(reference, other, what):
    np.testing.assert_allclose(
        other["losses"], reference["losses"], atol=1e-4, err_msg=f"{what}: losses differ"
    )
    assert sorted(other) == sorted(reference)
    for key in reference:
        np.testing.assert_allclose(
            other[key], reference[key], atol=1e-4, err_msg=f"{what}: weight {key} differs"
        )


# The real detector trains 4 steps everywhere: the kill test cuts after step 3 and resumes.
REAL = "rfcn,steps=4"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One-device runs, all in one process: the stand-in (clip norm 0.5 and unclipped) and
    the real detector."""
    return _run(
        "single",
        tmp_path_factory.mktemp("single"),
        standin="standin",
        unclipped="standin,clip=1e9",
        rfcn=REAL,
    )


@pytest.fixture(scope="module")
def single(references):
    return references["standin"]


@pytest.fixture(scope="module")
def single_rfcn(references):
    return references["rfcn"]


def test_clipping_is_active_in_the_reference_run(single, references):
    # Otherwise the equality tests below would not check that clipping uses the global norm.
    unclipped = references["unclipped"]
    assert max(np.abs(unclipped[k] - single[k]).max() for k in single if k != "losses") > 1e-3
    assert np.all(np.diff(single["losses"]) < 0), single["losses"]


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(single, tmp_path):
    mirrored = _run("mirrored", tmp_path, standin="standin")["standin"]
    _assert_same(single, mirrored, "MirroredStrategy (2 logical CPUs)")


def _start_workers(tmp_path, model="standin", env_of=lambda index: {}):
    """2 local worker processes of one MultiWorkerMirroredStrategy cluster."""
    ports = [_free_port(), _free_port()]
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        tf_config = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, "multi_worker", str(tmp_path / f"w{index}.npz"), model],
                env=_env(TF_CONFIG=tf_config, **env_of(index)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs, timeout=300):
    for index, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, f"worker {index} failed:\n{err[-4000:]}"


@pytest.mark.slow
def test_multi_worker_two_processes_match_one_device(single, tmp_path):
    # The chief also validates after every step (stand-in metric) and saves the best
    # checkpoint on its own: the other worker goes on training, nothing waits or diverges.
    _finish(_start_workers(tmp_path, env_of=lambda index: {"VALIDATE": "1"}))
    record = json.loads((tmp_path / "run_chief" / "best.json").read_text())
    assert record["step"] == 2 and [h["step"] for h in record["history"]] == [1, 2, 3]
    assert os.path.isfile(tmp_path / "run_chief" / "checkpoints" / "best" / "ckpt-2.index")
    for index in range(2):
        _assert_same(
            single,
            dict(np.load(tmp_path / f"w{index}.npz")),
            f"MultiWorkerMirroredStrategy worker {index}",
        )
    # Only the chief keeps checkpoints; worker 1's copy is discarded after each save.
    chief_dirs = [d for d in os.listdir(tmp_path) if d.startswith("ckpt_multi_worker")]
    kept = [d for d in chief_dirs if os.listdir(tmp_path / d)]
    assert len(kept) == 1, chief_dirs


@pytest.mark.slow
def test_real_detector_mirrored_matches_one_device(single_rfcn, tmp_path):
    mirrored = _run("mirrored", tmp_path, rfcn=REAL)["rfcn"]
    assert len(single_rfcn["losses"]) == 4 and np.all(np.isfinite(single_rfcn["losses"]))
    _assert_same(single_rfcn, mirrored, "MirroredStrategy, real R-FCN detector")


@pytest.mark.slow
def test_real_detector_multi_worker_matches_one_device_and_resumes_after_kill(
    single_rfcn, tmp_path
):
    # Reference: one device, 4 steps of the real small R-FCN with global batch 2.
    single = single_rfcn
    assert len(single["losses"]) == 4 and np.all(np.isfinite(single["losses"]))
    # 2 worker processes, 1 image each, match it: their losses of steps 1-3 before the kill
    # below, and after resuming the losses of steps 3-4 and the final weights.
    # Interrupted: checkpoints every 2 steps in one shared folder; worker 1 is killed -9 after
    # step 3 (worker 0 then waits in the next all-reduce and is stopped too); restarting both
    # resumes from the chief's step-2 checkpoint and ends with the same weights.
    shared = tmp_path / "shared_ckpt"
    cut = tmp_path / "cut"
    cut.mkdir()
    env = {"STEPS": "4", "CKPT_DIR": str(shared), "CKPT_EVERY": "2"}
    procs = _start_workers(
        cut, model="rfcn", env_of=lambda index: dict(env, KILL_AT="3" if index == 1 else "0")
    )
    procs[1].communicate(timeout=300)
    assert procs[1].returncode == -signal.SIGKILL
    try:
        procs[0].communicate(timeout=20)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].communicate()
    for index in range(2):
        before_kill = json.loads((cut / f"w{index}.npz.losses.json").read_text())
        np.testing.assert_allclose(
            before_kill,
            single["losses"][:3],
            atol=1e-4,
            err_msg=f"MultiWorkerMirroredStrategy worker {index}, real R-FCN detector",
        )
    assert tf_latest(shared).endswith("ckpt-2")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    _finish(_start_workers(resumed, model="rfcn", env_of=lambda index: env))
    for index in range(2):
        got = dict(np.load(resumed / f"w{index}.npz"))
        assert len(got["losses"]) == 2  # steps 3 and 4 only: resumed at 2
        np.testing.assert_allclose(got["losses"], single["losses"][2:], atol=1e-4)
        for key in single:
            if key != "losses":
                np.testing.assert_allclose(
                    got[key],
                    single[key],
                    atol=1e-4,
                    err_msg=f"resumed worker {index}: weight {key}",
                )


def tf_latest(folder):
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(folder)) or ""
