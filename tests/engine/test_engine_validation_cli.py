"""A short real training run with validation during training (``rfcn_tf.train.main``).

The tiny shapes config (64-pixel images, narrow small backbone) trains 12 steps validating
every 4: the best checkpoint and best.json land in the run folder, the validation scalars in
TensorBoard, the end-of-training evaluation and ``rfcn_tf.load(run_dir)`` use the best
checkpoint and the summary names its step and score. ``--print-config`` shows the steps a
schedule in epochs derives.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re

import pytest
import tensorflow as tf
from helpers.tiny_models import TINY_TRAIN_OVERRIDES as TINY


@pytest.fixture
def train_main(capfd, monkeypatch):
    """Runs ``rfcn_tf.train.main`` in this process (the test is about the run folder and the
    messages, not process isolation: no interpreter start, no TensorFlow import); returns
    (exit status, stdout, stderr). The CLI's logging setup and the error policy's quieting of
    TensorFlow's logger are undone afterwards, so later tests see logging as it was."""
    from rfcn_tf import train as train_cli

    monkeypatch.delenv("TF_CONFIG", raising=False)
    ours, tf_logger = logging.getLogger("rfcn_tf"), logging.getLogger("tensorflow")
    saved = (ours.handlers[:], ours.level, ours.propagate, tf_logger.level)

    def run(tmp_path, *overrides):
        monkeypatch.chdir(tmp_path)
        args = ["--work-dir", str(tmp_path / "run"), "--no-progress", "--no-export"]
        for override in list(TINY) + list(overrides):
            args += ["--set", override]
        ours.handlers[:] = []  # so the CLI logs to this test's captured stderr
        capfd.readouterr()
        code = train_cli.main(args)
        out, err = capfd.readouterr()
        return code, out, err

    yield run
    ours.handlers[:], ours.level, ours.propagate = saved[0], saved[1], saved[2]
    tf_logger.setLevel(saved[3])


def _tags(event_dir):
    tags = set()
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_training_validates_keeps_the_best_and_evaluates_it(tmp_path, train_main):
    code, stdout, stderr = train_main(
        tmp_path,
        "train.steps=12",
        "train.eval_every=4",
        "train.checkpoint_every=6",
        "train.ema_decay=0.9",
        "train.log_every=4",
    )
    assert code == 0, stderr[-4000:]
    run = tmp_path / "run"
    record = json.loads((run / "best.json").read_text())
    assert record["metric"] == "coco/AP50"
    assert [h["step"] for h in record["history"]] == [4, 8, 12]
    values = {h["step"]: h["value"] for h in record["history"]}
    assert record["value"] == max(values.values())
    best_step = min(s for s, v in values.items() if v == record["value"])  # ties keep the first
    assert record["step"] == best_step
    prefix = run / "checkpoints" / "best" / f"ckpt-{best_step}"
    assert os.path.isfile(f"{prefix}.index")
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-12")
    # Console: one line per validation, the summary names the best step and its score.
    assert len(re.findall(r"validation at step (4|8|12) ", stderr)) == 3, stderr[-3000:]
    assert f"best checkpoint: step {best_step}, coco/AP50 {record['value']:.4f}" in stdout
    # The end-of-training evaluation ran on the best checkpoint.
    metrics = json.loads(next(run.glob("eval/*/metrics.json")).read_text())
    assert metrics["info"]["checkpoint"] == str(prefix)
    # rfcn_tf.load(run folder) delivers the best checkpoint; which="latest" the last one.
    import rfcn_tf

    assert rfcn_tf.load(run).info["checkpoint"] == str(prefix)
    assert rfcn_tf.load(run, which="latest").info["checkpoint"].endswith("ckpt-12")
    tags = _tags(run / "tensorboard" / "train")
    for tag in ("val/coco_AP", "val/coco_AP50", "val/voc2010_mAP", "val/best_coco_AP50"):
        assert tag in tags, (tag, sorted(tags))


def test_print_config_shows_the_steps_derived_from_epochs(tmp_path, monkeypatch, capfd):
    from rfcn_tf import train as train_cli

    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    code = train_cli.main(["--config", "bccd_val", "--print-config"])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    # 205 train images, global batch 2: 41 epochs = ceil(41 * 102.5) = 4203 steps, warmup 1.4
    # epochs = 144 steps, validation every 4 epochs = 410 steps.
    for line in (
        "steps: 4203",
        "epochs: 41.0",
        "warmup_steps: 144",
        "eval_every: 410",
        "train_split: train",
        "val_split: val",
    ):
        assert re.search(rf"^\s+{re.escape(line)}$", out, re.M), line
