"""Loading faults through the evaluate, predict and export CLIs (in process): a truncated checkpoint
names its file (issue 12 item 9), another class count or architecture is one clear error that
is the last line on stderr (item 12), and the checkpoint is left as it was."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from fault_helpers import set_args, small_voc, snapshot, tiny_overrides
from PIL import Image

from rfcn_tf import evaluate as evaluate_cli
from rfcn_tf import predict as predict_cli
from rfcn_tf.config import load_config
from rfcn_tf.export import __main__ as export_cli
from rfcn_tf.model.builder import build_detector


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A VOC folder and a checkpoint of the shapes_tiny model for its 2 classes (no training:
    loading is what is tested)."""
    root = tmp_path_factory.mktemp("loading")
    voc = small_voc(root / "voc")
    overrides = tiny_overrides(voc, root / "run")
    cfg = load_config("shapes_tiny", overrides)
    model = build_detector(cfg.model, num_classes=2)
    checkpoint = tf.train.Checkpoint(
        model=model, num_classes=tf.Variable(2, dtype=tf.int64), step=tf.Variable(3, dtype=tf.int64)
    )
    prefix = tf.train.CheckpointManager(
        checkpoint, str(root / "run" / "checkpoints"), max_to_keep=1
    ).save(checkpoint_number=3)
    return {"root": root, "voc": voc, "overrides": overrides, "prefix": prefix}


def _evaluate(saved_run, prefix, *extra, overrides=None):
    return evaluate_cli.main(
        [
            "--config",
            "shapes_tiny",
            *set_args(overrides or saved_run["overrides"]),
            "--checkpoint",
            prefix,
            "--no-progress",
            "--out",
            str(saved_run["root"] / "eval"),
            *extra,
        ]
    )


def _last_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_truncated_checkpoint_is_named(saved_run, tmp_path, capfd):
    folder = tmp_path / "checkpoints"
    prefix = saved_run["prefix"]
    os.makedirs(folder)
    for name in os.listdir(os.path.dirname(prefix)):
        with open(os.path.join(os.path.dirname(prefix), name), "rb") as f:
            data = f.read()
        if ".data-" in name:
            data = data[: len(data) // 3]
        (folder / name).write_bytes(data)
    broken = str(folder / os.path.basename(prefix))
    before = snapshot(folder)
    for run in (
        lambda: _evaluate(saved_run, broken),
        lambda: predict_cli.main(
            [
                "--config",
                "shapes_tiny",
                *set_args(saved_run["overrides"]),
                "--checkpoint",
                broken,
                str(_image(tmp_path)),
                "--out",
                str(tmp_path / "pred"),
            ]
        ),
        lambda: export_cli.main(
            [
                "--config",
                "shapes_tiny",
                *set_args(saved_run["overrides"]),
                "--checkpoint",
                broken,
                "--out",
                str(tmp_path / "export"),
            ]
        ),
    ):
        code = run()
        err = capfd.readouterr().err
        assert code == 1
        line = _last_line(err)
        assert line.startswith("error: ") and broken in line, err[-2000:]
        assert "Read less bytes than requested" not in err.replace(line, "") and (
            "Traceback" not in err
        )
    assert snapshot(folder) == before


def _image(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(path)
    return path


def test_class_count_mismatch_is_one_line(saved_run, capfd):
    overrides = saved_run["overrides"] + ["data.class_names=[cell,dot,extra]"]
    code = _evaluate(saved_run, saved_run["prefix"], overrides=overrides)
    err = capfd.readouterr().err
    assert code == 1
    line = _last_line(err)
    assert line.startswith("error: ") and "2 classes" in line and "3" in line, err[-2000:]
    assert "Traceback" not in err


def test_another_architecture_is_the_last_line(saved_run, capfd):
    overrides = saved_run["overrides"] + ["model.head.channels=24"]
    code = _evaluate(saved_run, saved_run["prefix"], overrides=overrides)
    err = capfd.readouterr().err
    assert code == 1
    line = _last_line(err)
    assert line.startswith("error: ") and saved_run["prefix"] in line, err[-3000:]
    assert "Value in checkpoint could not be found" not in err and "Traceback" not in err
