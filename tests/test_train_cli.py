"""End-to-end tests of ``python -m rfcn_tf.train`` (subprocesses, a tiny shapes config).

The tiny config (64-pixel shapes, a narrow small backbone) keeps each run to seconds of training;
what is checked is the CLI's contract: outputs and their places, resuming after ``kill -9``,
the NaN guard, clear errors for bad checkpoints, both schemes.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
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


def _args(tmp_path, *extra, tiny=True):
    args = [
        sys.executable,
        "-m",
        "rfcn_tf.train",
        "--work-dir",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        f"export.out_dir={tmp_path / 'export'}",
    ]
    for override in TINY if tiny else []:
        args += ["--set", override]
    return args + list(extra)


def _train(tmp_path, *extra, timeout=600):
    return subprocess.run(
        _args(tmp_path, *extra),
        cwd=str(tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


def test_print_config_applies_overrides_and_unknown_keys_name_the_nearest(tmp_path):
    out = subprocess.run(
        _args(tmp_path, "--print-config", "--set", "train.lr=0.5", tiny=False),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "lr: 0.5" in out.stdout and "source: shapes" in out.stdout
    bad = subprocess.run(
        _args(tmp_path, "--set", "train.learning_rate=0.5", tiny=False),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "unknown config key 'train.learning_rate'" in bad.stderr
    assert "did you mean" in bad.stderr and "Traceback" not in bad.stderr


def test_full_run_trains_evaluates_exports_and_reports_where(tmp_path):
    out = _train(tmp_path, "--set", "train.steps=30", "--set", "train.checkpoint_every=10")
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "run"
    for label in ("work dir:", "checkpoints:", "tensorboard:", "metrics:", "export:"):
        assert label in out.stdout, (label, out.stdout)
    assert "trained to step 30" in out.stdout and "mAP@0.5" in out.stdout
    assert (run / "config.yaml").is_file() and (run / "classes.txt").read_text().split() == [
        "circle",
        "square",
        "triangle",
    ]
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-30")
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


def test_kill_9_then_rerun_resumes_from_the_last_checkpoint(tmp_path):
    extra = [
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=400",
        "--set",
        "train.checkpoint_every=20",
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
            time.sleep(0.2)
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
    assert 20 <= step < 400 and step % 20 == 0
    again = _train(tmp_path, *extra)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming from {killed_at}" in again.stderr
    assert f"(resumed from ckpt-{step})" in again.stdout
    assert "trained to step 400" in again.stdout
    logged = [int(s) for s in re.findall(r"step (\d+)/400 \[joint\]", again.stderr)]
    assert logged and logged[0] == step + 5 and logged[-1] == 400  # continued, not restarted
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-400")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    out = _train(
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
    assert out.returncode == 1, out.stderr[-3000:]
    # Either a loss became NaN/Inf, or (first) BatchNorm statistics did while the loss was finite.
    match = re.search(r"error: non-finite (loss|model weights) at step (\d+)", out.stderr)
    assert match, out.stderr[-3000:]
    if match.group(1) == "loss":
        assert re.search(r"at step \d+ \(joint\): .*total_loss=", out.stderr)
    bad_step = int(match.group(2))
    assert "Traceback" not in out.stderr
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    if bad_step > 1:
        assert latest.endswith(f"ckpt-{bad_step - 1}")
        assert f"The last good checkpoint is {latest}" in out.stderr
        reader = tf.train.load_checkpoint(latest)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating and "model/" in name:  # (not the data iterator's state)
                assert np.all(np.isfinite(reader.get_tensor(name))), name
    else:
        assert latest is None and "No checkpoint was written yet" in out.stderr


def test_bad_checkpoints_give_clear_errors(tmp_path):
    missing = _train(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=2",
        "--set",
        f"train.init_checkpoint={tmp_path / 'nowhere'}",
    )
    assert missing.returncode == 1
    assert "train.init_checkpoint=" in missing.stderr and "no checkpoint there" in missing.stderr
    first = _train(tmp_path, "--no-eval", "--no-export", "--set", "train.steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    other = _train(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.steps=4",
        "--set",
        "data.shapes.classes=[circle,square]",
    )
    assert other.returncode == 1
    assert "holds checkpoints of a run with another model" in other.stderr
    assert "classes: ['circle', 'square', 'triangle'] -> ['circle', 'square']" in other.stderr
    # Fine-tuning from that run into a new work dir with another class count.
    init = _train(
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
    assert init.returncode == 1
    assert "trained with 3 classes but this model has 2" in init.stderr


def test_alternating_scheme_end_to_end_and_losses_fall(tmp_path):
    out = _train(
        tmp_path,
        "--no-eval",
        "--no-export",
        "--set",
        "train.scheme=alternating",
        "--set",
        "train.stage_steps=[60,60,20,20]",
        "--set",
        "train.checkpoint_every=50",
        "--set",
        "train.log_every=10",
        "--set",
        "model.roi.sampling=balanced",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    losses = _losses(out.stderr)
    assert set(losses) == {"rpn", "rfcn", "rpn_finetune", "rfcn_finetune"}
    for stage in ("rpn", "rfcn"):
        assert losses[stage][-1] < losses[stage][0], (stage, losses[stage])
    run = tmp_path / "run" / "checkpoints"
    assert (run / "stage_2_proposals" / "model.index").is_file()
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-160")
    reader = tf.train.load_checkpoint(str(run / "ckpt-160"))
    assert int(reader.get_tensor("stage/.ATTRIBUTES/VARIABLE_VALUE")) == 3


def test_a_second_run_on_a_locked_work_dir_refuses_naming_the_first(tmp_path):
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
        out = _train(tmp_path, "--set", "train.steps=5", timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
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
