"""End-to-end tests of ``python -m rfcn_tf.train`` (a tiny shapes config).

The full run and the run that is killed are real subprocesses; the tests about messages and
files call ``rfcn_tf.train.main`` in this process (``train_main``), which skips an interpreter
start and TensorFlow import per run (tests/test_cli_shape.py checks the real CLI's exit status,
one-line error and --debug traceback).

The tiny config (64-pixel shapes, a narrow small backbone) keeps each run to seconds of training;
what is checked is the CLI's contract: outputs and their places, resuming after ``kill -9``,
the NaN guard, clear errors for bad checkpoints, both schemes.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny_models import TINY_TRAIN_OVERRIDES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = TINY_TRAIN_OVERRIDES


def _env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    return env


def _argv(tmp_path, *extra, tiny=True):
    """The CLI's flags (no interpreter): the tiny config, work dir and export dir under tmp_path."""
    args = [
        "--work-dir",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        f"export.out_dir={tmp_path / 'export'}",
    ]
    for override in TINY if tiny else []:
        args += ["--set", override]
    return args + list(extra)


def _args(tmp_path, *extra, tiny=True):
    return [sys.executable, "-m", "rfcn_tf.train", *_argv(tmp_path, *extra, tiny=tiny)]


def _train(tmp_path, *extra, timeout=600):
    return subprocess.run(
        _args(tmp_path, *extra),
        cwd=str(tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def train_main(capfd):
    """Runs ``rfcn_tf.train.main`` in this process (no interpreter start, no TensorFlow import:
    these tests are about messages and files, not process isolation); returns
    (exit status, stdout, stderr). The CLI's logging setup and the error policy's quieting of
    TensorFlow's logger are undone afterwards, so later tests see logging as it was."""
    from rfcn_tf import train as train_cli

    ours, tf_logger = logging.getLogger("rfcn_tf"), logging.getLogger("tensorflow")
    saved = (ours.handlers[:], ours.level, ours.propagate, tf_logger.level)

    def run(tmp_path, *extra, tiny=True):
        ours.handlers[:] = []  # so the CLI logs to this test's captured stderr
        capfd.readouterr()
        code = train_cli.main(_argv(tmp_path, *extra, tiny=tiny))
        out, err = capfd.readouterr()
        return code, out, err

    yield run
    ours.handlers[:], ours.level, ours.propagate = saved[0], saved[1], saved[2]
    tf_logger.setLevel(saved[3])


def _losses(stderr: str) -> dict[str, list[float]]:
    """{stage: [total_loss at each logged step]} from the log lines."""
    found: dict[str, list[float]] = {}
    for stage, value in re.findall(r"step \d+/\d+ \[(\w+)\] .*?total_loss=([0-9.]+)", stderr):
        found.setdefault(stage, []).append(float(value))
    return found


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "rfcn_tf.train", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for flag in (
        "--config",
        "--set",
        "--work-dir",
        "--strategy",
        "--no-eval",
        "--no-export",
        "--no-progress",
        "--print-config",
        "multi_worker",
    ):
        assert flag in out.stdout, flag


def test_print_config_applies_overrides_and_unknown_keys_name_the_nearest(tmp_path, train_main):
    code, out, err = train_main(tmp_path, "--print-config", "--set", "train.lr=0.5", tiny=False)
    assert code == 0, err
    assert "lr: 0.5" in out and "source: shapes" in out
    code, _, err = train_main(tmp_path, "--set", "train.learning_rate=0.5", tiny=False)
    assert code == 1
    assert "unknown config key 'train.learning_rate'" in err
    assert "did you mean" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One real run of the CLI (train 20 steps, evaluate, export): its output and its folder.
    test_bad_checkpoints_give_clear_errors starts from copies of its checkpoints."""
    tmp_path = tmp_path_factory.mktemp("full_run")
    out = _train(tmp_path, "--set", "train.steps=20", "--set", "train.checkpoint_every=10")
    return out, tmp_path


def test_full_run_trains_evaluates_exports_and_reports_where(full_run):
    out, tmp_path = full_run
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "run"
    for label in ("work dir:", "checkpoints:", "tensorboard:", "metrics:", "export:"):
        assert label in out.stdout, (label, out.stdout)
    assert "trained to step 20" in out.stdout and "mAP@0.5" in out.stdout
    assert (run / "config.yaml").is_file() and (run / "classes.txt").read_text().split() == [
        "circle",
        "square",
        "triangle",
    ]
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-20")
    assert (run / "eval" / "validation" / "metrics.json").is_file()
    exports = glob.glob(str(tmp_path / "export" / "rfcn" / "*" / "saved_model.pb"))
    assert len(exports) == 1, exports
    # TensorBoard: every loss, the learning rate, throughput, validation images with boxes.
    tags = set()
    for path in glob.glob(str(run / "tensorboard" / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    for tag in (
        "loss/total_loss",
        "loss/rpn_objectness_loss",
        "loss/rpn_box_loss",
        "loss/rfcn_class_loss",
        "loss/rfcn_box_loss",
        "train/learning_rate",
        "train/images_per_sec",
        "val/detections",
    ):
        assert tag in tags, (tag, tags)


def test_kill_9_then_rerun_resumes_from_the_last_checkpoint(tmp_path, train_main):
    # 40 steps, a checkpoint every 5: the kill follows the first checkpoint within a poll
    # (50 ms) while >= 35 steps (seconds of training) are left, so it always lands mid-run.
    # The killed run is a real process; the rerun resumes in this one (what it reads is on disk).
    extra = [
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=40",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.keep_checkpoints=2",
    ]
    checkpoints = tmp_path / "run" / "checkpoints"
    proc = subprocess.Popen(
        _args(tmp_path, *extra),
        cwd=str(tmp_path),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (
                glob.glob(str(checkpoints / "ckpt-*.index"))
                and (checkpoints / "checkpoint").is_file()
            ):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before it was killed:\n{proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = tf.train.latest_checkpoint(str(checkpoints))
    assert killed_at is not None
    step = int(killed_at.rsplit("-", 1)[1])
    assert 5 <= step < 40 and step % 5 == 0
    code, again_out, again_err = train_main(tmp_path, *extra)
    assert code == 0, again_err[-4000:]
    assert f"resuming from {killed_at}" in again_err
    assert f"(resumed from ckpt-{step})" in again_out
    assert "trained to step 40" in again_out
    logged = [int(s) for s in re.findall(r"step (\d+)/40 \[joint\]", again_err)]
    assert logged and logged[0] == step + 5 and logged[-1] == 40  # continued, not restarted
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-40")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, train_main):
    code, _, stderr = train_main(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=200",
        "--set",
        "train.lr=1.0e+12",
        "--set",
        "train.clip_norm=null",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.checkpoint_every=1",
    )
    assert code == 1, stderr[-3000:]
    # Either a loss became NaN/Inf, or (first) BatchNorm statistics did while the loss was finite.
    match = re.search(r"error: non-finite (loss|model weights) at step (\d+)", stderr)
    assert match, stderr[-3000:]
    if match.group(1) == "loss":
        assert re.search(r"at step \d+ \(joint\): .*total_loss=", stderr)
    bad_step = int(match.group(2))
    assert "Traceback" not in stderr
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    if bad_step > 1:
        assert latest.endswith(f"ckpt-{bad_step - 1}")
        assert f"The last good checkpoint is {latest}" in stderr
        reader = tf.train.load_checkpoint(latest)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating and "model/" in name:  # (not the data iterator's state)
                assert np.all(np.isfinite(reader.get_tensor(name))), name
    else:
        assert latest is None and "No checkpoint was written yet" in stderr


def test_bad_checkpoints_give_clear_errors(tmp_path, full_run, train_main):
    import shutil

    code, _, err = train_main(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=2",
        "--set",
        f"train.init_checkpoint={tmp_path / 'nowhere'}",
    )
    assert code == 1
    assert "train.init_checkpoint=" in err and "no checkpoint there" in err
    # A finished 3-class run (the full run's config and checkpoints; nothing else is read).
    out, full_tmp = full_run
    assert out.returncode == 0, out.stderr[-3000:]
    (tmp_path / "run").mkdir()
    for name in ("config.yaml", "classes.txt"):
        shutil.copy(full_tmp / "run" / name, tmp_path / "run" / name)
    shutil.copytree(full_tmp / "run" / "checkpoints", tmp_path / "run" / "checkpoints")
    code, _, err = train_main(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=24",
        "--set",
        "data.shapes.classes=[circle,square]",
    )
    assert code == 1
    assert "holds checkpoints of a run with another model" in err
    assert "classes: ['circle', 'square', 'triangle'] -> ['circle', 'square']" in err
    # Fine-tuning from that run into a new work dir with another class count.
    code, _, err = train_main(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--work-dir",
        str(tmp_path / "ft"),
        "--set",
        "train.steps=2",
        "--set",
        "data.shapes.classes=[circle,square]",
        "--set",
        f"train.init_checkpoint={tmp_path / 'run' / 'checkpoints'}",
    )
    assert code == 1
    assert "trained with 3 classes but this model has 2" in err


def test_alternating_scheme_end_to_end_and_losses_fall(tmp_path, train_main):
    code, _, stderr = train_main(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.scheme=alternating",
        "--set",
        "train.stage_steps=[30,30,10,10]",
        "--set",
        "train.checkpoint_every=50",
        "--set",
        "train.log_every=5",
        "--set",
        "model.roi.sampling=balanced",
    )
    assert code == 0, stderr[-4000:]
    losses = _losses(stderr)
    assert set(losses) == {"rpn", "rfcn", "rpn_finetune", "rfcn_finetune"}
    for stage in ("rpn", "rfcn"):
        assert losses[stage][-1] < losses[stage][0], (stage, losses[stage])
    run = tmp_path / "run" / "checkpoints"
    assert (run / "stage_2_proposals" / "model.index").is_file()
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-80")
    reader = tf.train.load_checkpoint(str(run / "ckpt-80"))
    assert int(reader.get_tensor("stage/.ATTRIBUTES/VARIABLE_VALUE")) == 3


def test_a_second_run_on_a_locked_work_dir_refuses_naming_the_first(tmp_path, train_main):
    import json
    import socket

    work = tmp_path / "run"
    work.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (work / ".lock").write_text(
            json.dumps(
                {
                    "pid": holder.pid,
                    "host": socket.gethostname(),
                    "started": "earlier",
                    "command": "first run",
                }
            )
        )
        code, _, err = train_main(tmp_path, "--set", "train.steps=5")
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"is in use by process {holder.pid} on {socket.gethostname()}" in last, last
    assert not (work / "config.yaml").exists()  # nothing written by the refused run


def test_end_of_training_export_goes_under_the_work_dir_by_default():
    from rfcn_tf.config import load_config
    from rfcn_tf.training import export_dir_for

    cfg = load_config("shapes_tiny", ["train.work_dir=runs/x"])
    assert export_dir_for(cfg) == os.path.abspath(os.path.join("runs/x", "export"))
    assert export_dir_for(cfg, "elsewhere") == os.path.abspath("elsewhere")
    cfg = load_config("shapes_tiny", ["train.work_dir=runs/x", "export.out_dir=served"])
    assert export_dir_for(cfg) == os.path.abspath("served")
