"""End-to-end tests of `python -m rfcn_tf.evaluate` on a tiny model and the shapes dataset.

A tiny R-FCN (small backbone, 64 x 64 shapes images) is built with random weights and saved the
way training saves it (`tf.train.CheckpointManager` of `model` + `num_classes` under
`<work_dir>/checkpoints`); the CLI's numbers must equal an in-Python evaluation of the same
model on the same images.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from helpers.fake_savedmodel import write_fake_export
from helpers.tiny_models import TINY_CLI_MODEL
from PIL import Image

from rfcn_tf import evaluate as evaluate_cli
from rfcn_tf.config import load_config
from rfcn_tf.data.pipeline import build_dataset
from rfcn_tf.evaluation.evaluator import evaluate_detector
from rfcn_tf.model.builder import build_detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "data": {
        "source": "shapes",
        "scales": [64],
        "max_size": 64,
        "max_boxes": 4,
        "deterministic": True,
        "shapes": {"image_size": 64, "num_val": 5, "max_objects": 2, "min_size": 0.25},
    },
    "model": TINY_CLI_MODEL,
    "eval": {"batch_size": 2},
}


def _save_checkpoint(model, work_dir, num_classes, with_counter=True):
    objects = {"model": model}
    if with_counter:
        objects["num_classes"] = tf.Variable(num_classes, dtype=tf.int64, trainable=False)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(**objects), os.path.join(work_dir, "checkpoints"), max_to_keep=1
    )
    return manager.save(checkpoint_number=7)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as training leaves it: config.yaml and checkpoints/ckpt-7."""
    root = tmp_path_factory.mktemp("eval_cli")
    work_dir = str(root / "run")
    os.makedirs(work_dir)
    cfg_values = dict(TINY, train={"work_dir": work_dir})
    cfg_path = os.path.join(work_dir, "config.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg_values, f)
    cfg = load_config(cfg_path)
    class_names = list(cfg.data.shapes.classes)  # what the shapes source reports
    keras.utils.set_random_seed(3)
    model = build_detector(cfg.model, num_classes=len(class_names))
    prefix = _save_checkpoint(model, work_dir, len(class_names))
    return {
        "root": root,
        "work_dir": work_dir,
        "config": cfg_path,
        "cfg": cfg,
        "class_names": class_names,
        "model": model,
        "prefix": prefix,
    }


@pytest.fixture(scope="module")
def in_python(run):
    """The same model evaluated in Python on the first 4 validation images (reports on disk)."""
    cfg = run["cfg"]
    dataset = build_dataset(
        cfg.data, split=cfg.data.val_split, training=False, batch_size=cfg.eval.batch_size
    )
    out = str(run["root"] / "in_python")
    metrics = evaluate_detector(
        run["model"].detect,
        dataset,
        class_names=run["class_names"],
        max_images=4,
        progress=False,
        out_dir=out,
    )
    return metrics, out


@pytest.mark.slow
def test_cli_end_to_end_matches_in_python_evaluation(run, in_python, capfd, monkeypatch):
    # In this process (the CLI's main, as `python -m` runs it): what is compared is files and
    # numbers; the real CLI's exit status and error line are checked by the subprocesses of
    # test_truncated_checkpoint_... and tests/test_cli_shape.py.
    out = str(run["root"] / "cli_out")
    monkeypatch.chdir(REPO)
    capfd.readouterr()
    code = evaluate_cli.main(
        [
            "--checkpoint",
            os.path.join(run["work_dir"], "checkpoints"),
            "--out",
            out,
            "--max-images",
            "4",
        ]
    )
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr[-3000:]
    summary = [line for line in stdout.splitlines() if line.strip()]
    assert len(summary) == 1 and summary[0].startswith("4 images, ")
    assert f"-> {out}" in summary[0]
    assert "evaluate" in stderr  # the progress bar's label

    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["info"]["checkpoint"] == run["prefix"]
    assert metrics["info"]["config"] == run["config"]  # found beside the checkpoints
    with open(os.path.join(out, "detections.json")) as f:
        detections = json.load(f)
    assert metrics["num_detections"] == len(detections) > 0
    for name in ("01_circle.png", "02_square.png", "03_triangle.png"):
        with Image.open(os.path.join(out, "pr_curves", name)) as im:
            im.load()
    assert "| circle |" in open(os.path.join(out, "metrics.md")).read()

    expected, expected_dir = in_python
    assert metrics["num_images"] == expected["num_images"] == 4
    assert metrics["num_detections"] == expected["num_detections"]
    for key, value in expected["coco"].items():
        got = metrics["coco"][key]
        assert (got is None and np.isnan(value)) or got == pytest.approx(value, abs=1e-9), key
    for group in ("voc07", "voc2010"):
        value = expected[group]["mAP"]
        got = metrics[group]["mAP"]
        assert (got is None and np.isnan(value)) or got == pytest.approx(value, abs=1e-9)
    with open(os.path.join(expected_dir, "detections.json")) as f:
        expected_dets = json.load(f)
    assert [d["image_id"] for d in detections] == [d["image_id"] for d in expected_dets]
    np.testing.assert_allclose(
        [d["bbox"] for d in detections], [d["bbox"] for d in expected_dets], atol=1e-3
    )
    np.testing.assert_allclose(
        [d["score"] for d in detections], [d["score"] for d in expected_dets], atol=1e-5
    )


def test_class_count_mismatch_is_a_clear_error(run, capsys):
    # the recorded counter speaks first
    code = evaluate_cli.main(
        [
            "--config",
            run["config"],
            "--checkpoint",
            run["prefix"],
            "--set",
            "data.shapes.classes=[circle, square]",
            "--out",
            str(run["root"] / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "trained for 3 classes but the dataset (shapes, split 'validation') has 2" in err
    assert "Traceback" not in err
    # without the counter, the class score maps' shape tells
    bare_dir = str(run["root"] / "bare")
    prefix = _save_checkpoint(run["model"], bare_dir, 3, with_counter=False)
    code = evaluate_cli.main(
        [
            "--config",
            run["config"],
            "--checkpoint",
            prefix,
            "--set",
            "data.shapes.classes=[circle, square, triangle, ring]",
            "--out",
            str(run["root"] / "y"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "classification score maps have 36 channels (3 classes" in err
    assert "5 classes need 45 = 3x3x(4+1)" not in err  # C=4 -> 3x3x5 = 45
    assert "4 classes need 45 = 3x3x(4+1)" in err


def test_missing_checkpoint_and_bad_flags(run, capsys):
    code = evaluate_cli.main(
        ["--config", run["config"], "--checkpoint", str(run["root"] / "nowhere")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "no checkpoint there" in err and "nowhere" in err
    code = evaluate_cli.main(
        ["--config", run["config"], "--checkpoint", run["prefix"], "--max-images", "0"]
    )
    assert code == 1 and "--max-images must be >= 1, got 0" in capsys.readouterr().err
    code = evaluate_cli.main(["--config", "no_such_preset", "--checkpoint", run["prefix"]])
    assert code == 1 and "unknown config 'no_such_preset'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # neither model source: argparse usage error
        evaluate_cli.main(["--config", run["config"]])
    assert exc.value.code == 2
    assert "one of the arguments --checkpoint --saved-model is required" in (
        capsys.readouterr().err
    )


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--config",
        "--set",
        "--checkpoint",
        "--saved-model",
        "--split",
        "--out",
        "--max-images",
        "--multiscale",
        "--no-progress",
    ):
        assert flag in text
    assert "metrics.json" in text


def test_multiscale_flag_runs_the_wrapper(run, capsys):
    out = str(run["root"] / "ms")
    code = evaluate_cli.main(
        [
            "--checkpoint",
            run["prefix"],
            "--out",
            out,
            "--max-images",
            "2",
            "--multiscale",
            "--set",
            "eval.multiscale_sizes=[48, 64]",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["info"]["multiscale_sizes"] == [48, 64]
    assert metrics["num_images"] == 2
    assert captured.out.startswith("2 images, ")


FAKE_BOXES = np.array([[0.1, 0.1, 0.6, 0.6], [0.4, 0.3, 0.9, 0.8]], np.float32)  # normalized
FAKE_SCORES = np.array([0.9, 0.6], np.float32)
FAKE_CLASSES = np.array([1.0, 2.0], np.float32)


def test_saved_model_source_matches_known_detections(run, capsys):
    from rfcn_tf.evaluation.evaluator import compute_metrics

    version = write_fake_export(
        str(run["root"] / "export" / "fake" / "3"),
        run["class_names"],
        boxes=FAKE_BOXES,
        scores=FAKE_SCORES,
        classes=FAKE_CLASSES,
    )
    out = str(run["root"] / "sm_eval")
    # the model folder resolves to its latest version
    code = evaluate_cli.main(
        [
            "--config",
            run["config"],
            "--saved-model",
            str(run["root"] / "export" / "fake"),
            "--out",
            out,
            "--max-images",
            "4",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("4 images, 8 detections: ")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["info"]["saved_model"] == version
    # expected: the fixed normalized boxes in each original image's pixels
    cfg = run["cfg"]
    gts = []
    dets = []
    for features in build_dataset(
        cfg.data, split=cfg.data.val_split, training=False, batch_size=1
    ).take(4):
        h, w = features["original_shapes"][0].numpy()
        rh, rw = features["image_shapes"][0].numpy()
        mask = features["gt_mask"][0].numpy()
        image_id = int(features["image_ids"][0])
        gts.append(
            {
                "image_id": image_id,
                "boxes": features["gt_boxes"][0].numpy()[mask] * np.array([h / rh, w / rw] * 2),
                "classes": features["gt_classes"][0].numpy()[mask],
                "difficult": np.zeros(mask.sum(), bool),
                "is_crowd": np.zeros(mask.sum(), bool),
                "height": int(h),
                "width": int(w),
            }
        )
        dets.append(
            {
                "image_id": image_id,
                "boxes": FAKE_BOXES * [h, w, h, w],
                "scores": FAKE_SCORES,
                "classes": FAKE_CLASSES.astype(int),
            }
        )
    expected, _ = compute_metrics(gts, dets, class_names=run["class_names"])
    for key, value in expected["coco"].items():
        got = metrics["coco"][key]
        assert (got is None and np.isnan(value)) or got == pytest.approx(value, abs=1e-6), key
    assert metrics["voc07"]["mAP"] == pytest.approx(expected["voc07"]["mAP"], abs=1e-6)
    with open(os.path.join(out, "detections.json")) as f:
        results = json.load(f)
    assert results[0]["bbox"] == pytest.approx([6.4, 6.4, 32.0, 32.0], abs=1e-3)  # 64 px image

    # class-count mismatch against the export's labels.txt
    code = evaluate_cli.main(
        [
            "--config",
            run["config"],
            "--saved-model",
            version,
            "--set",
            "data.shapes.classes=[circle, ring]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "has 3 classes (circle, square, triangle) but the dataset" in err
    code = evaluate_cli.main(["--config", run["config"], "--saved-model", version, "--multiscale"])
    assert code == 1 and "--multiscale needs --checkpoint" in capsys.readouterr().err
    code = evaluate_cli.main(
        ["--config", run["config"], "--saved-model", str(run["root"] / "export")]
    )
    assert code == 1 and "no SavedModel there" in capsys.readouterr().err


def test_truncated_checkpoint_names_the_file_and_other_architecture_ends_on_the_error(
    run, tmp_path, capfd
):
    import shutil

    broken = tmp_path / "broken" / "checkpoints"
    shutil.copytree(os.path.join(run["work_dir"], "checkpoints"), broken)
    data = next(p for p in broken.iterdir() if ".data-" in p.name)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    base = [
        sys.executable,
        "-m",
        "rfcn_tf.evaluate",
        "--config",
        run["config"],
        "--out",
        str(tmp_path / "out"),
        "--max-images",
        "1",
        "--no-progress",
    ]
    # the truncated file: in this process (the message is what is checked)
    capfd.readouterr()
    code = evaluate_cli.main(base[3:] + ["--checkpoint", str(broken)])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot read checkpoint") and str(data) in last, last
    # a checkpoint of another architecture: TF's ~60 restore warnings (logged when the failed
    # restore is garbage collected, up to the process's exit) stay silent: a real process
    proc = subprocess.run(
        base + ["--checkpoint", run["prefix"], "--set", "model.head.channels=24"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "does not fit this model" in lines[-1], lines[-5:]
    assert not any("Value in checkpoint could not be found" in line for line in lines)
