"""End-to-end tests of `python -m rfcn_tf.predict`: inputs, bad images, outputs, numbers.

A tiny random-weight R-FCN checkpoint (small backbone, 64-px images) in a run folder laid out as
training leaves it (config.yaml, classes.txt, checkpoints/ckpt-N), and a SavedModel with
the serving_default contract (docs/ARCHITECTURE.md, "Export") whose detections are known boxes.
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

from rfcn_tf import predict as predict_cli
from rfcn_tf.config import load_config
from rfcn_tf.data.transforms import pad_to_multiple, resize_image
from rfcn_tf.model.builder import build_detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["circle", "square", "triangle"]

TINY = {
    "data": {
        "source": "shapes",
        "scales": [64],
        "max_size": 96,
        "max_boxes": 4,
        "shapes": {"image_size": 64, "num_val": 2},
    },
    "model": TINY_CLI_MODEL,
}

FAKE_BOXES = np.array([[0.1, 0.1, 0.6, 0.6], [0.4, 0.3, 0.9, 0.8]], np.float32)  # normalized
FAKE_SCORES = np.array([0.9, 0.6], np.float32)
FAKE_CLASSES = np.array([1.0, 3.0], np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_cli")
    work_dir = root / "run"
    os.makedirs(work_dir / "checkpoints")
    with open(work_dir / "config.yaml", "w") as f:
        yaml.safe_dump(dict(TINY, train={"work_dir": str(work_dir)}), f)
    with open(work_dir / "classes.txt", "w") as f:
        f.write("".join(f"{n}\n" for n in NAMES))
    cfg = load_config(str(work_dir / "config.yaml"))
    keras.utils.set_random_seed(5)
    model = build_detector(cfg.model, num_classes=len(NAMES))
    ckpt = tf.train.Checkpoint(model=model, num_classes=tf.Variable(3, dtype=tf.int64))
    prefix = tf.train.CheckpointManager(ckpt, str(work_dir / "checkpoints"), 1).save(2)

    images = root / "images"
    os.makedirs(images / "sub")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, size=(50, 70, 3), dtype=np.uint8)
    b = rng.integers(0, 255, size=(64, 40), dtype=np.uint8)  # grayscale: read as RGB
    c = rng.integers(0, 255, size=(30, 30, 4), dtype=np.uint8)  # RGBA
    Image.fromarray(a).save(images / "a.png")
    Image.fromarray(b).save(images / "sub" / "b.png")
    Image.fromarray(c).save(images / "sub" / "c.PNG")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    (images / "notes.txt").write_text("not an image")
    return {
        "root": root,
        "work_dir": work_dir,
        "model": model,
        "prefix": prefix,
        "images": images,
        "cfg": cfg,
    }


def _expected(model, image, cfg):
    """In-Python single-scale inference: resize like evaluation, detect, back to pixels."""
    resized, _ = resize_image(
        tf.constant(image), min_size=cfg.data.scales[0], max_size=cfg.data.max_size
    )
    h, w = resized.shape[:2]
    out = model.detect(pad_to_multiple(resized, 16)[None], tf.constant([[h, w]], tf.int32))
    n = int(out["num_detections"][0])
    boxes = out["detection_boxes"][0, :n].numpy() * np.array(
        [image.shape[0] / h, image.shape[1] / w] * 2
    )
    return boxes, out["detection_scores"][0, :n].numpy(), out["detection_classes"][0, :n].numpy()


def test_expand_inputs_files_folders_globs():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for name in ("x.jpg", "y.PNG", "z.txt", "sub/w.png"):
            os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
            open(os.path.join(d, name), "w").close()
        paths, failed = predict_cli.expand_inputs(
            [
                d,
                os.path.join(d, "x.jpg"),
                os.path.join(d, "**", "*.png"),
                os.path.join(d, "nothing*.gif"),
                os.path.join(d, "missing.jpg"),
                os.path.join(d, "z.txt"),
            ]
        )
        rel = [os.path.relpath(p, d) for p in paths]
        # folder: image extensions only, not recursive; duplicates removed; a named file is
        # taken whatever its extension (reading decides)
        assert rel == ["x.jpg", "y.PNG", os.path.join("sub", "w.png"), "z.txt"]
        assert [f["error"] for f in failed] == [
            "no file matches this pattern",
            "no such file or folder",
        ]


def test_checkpoint_predict_with_a_bad_image(setup, capsys):
    out = setup["root"] / "out_ckpt"
    images = setup["images"]
    code = predict_cli.main(
        [
            str(images / "a.png"),
            str(images / "broken.jpg"),
            str(images / "sub"),
            str(images / "missing.png"),
            "--checkpoint",
            str(setup["work_dir"] / "checkpoints"),
            "--out",
            str(out),
            "--score-threshold",
            "0.0",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # some inputs failed, the others were processed
    assert "broken.jpg" in captured.err and "missing.png" in captured.err
    assert "Traceback" not in captured.err
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("predicted 3 images (2 failed")

    with open(out / "detections.json") as f:
        report = json.load(f)
    assert report["class_names"] == NAMES
    assert report["model"]["checkpoint"] == setup["prefix"]
    assert sorted(f["file"] for f in report["failed"]) == sorted(
        [str(images / "broken.jpg"), str(images / "missing.png")]
    )
    files = [r["file"] for r in report["images"]]
    assert files == [
        str(images / "a.png"),
        str(images / "sub" / "b.png"),
        str(images / "sub" / "c.PNG"),
    ]
    for record in report["images"]:
        src = np.asarray(Image.open(record["file"]).convert("RGB"))
        with Image.open(record["output"]) as im:
            drawn = np.asarray(im.convert("RGB"))
        assert drawn.shape == src.shape == (record["height"], record["width"], 3)
        boxes, scores, classes = _expected(setup["model"], src, setup["cfg"])
        got = record["detections"]
        assert len(got) == len(scores) > 0
        order = np.argsort(-scores, kind="stable")
        got_sorted = sorted(got, key=lambda d: -d["score"])
        np.testing.assert_allclose([d["score"] for d in got_sorted], scores[order], atol=1e-5)
        np.testing.assert_allclose([d["box_yxyx"] for d in got_sorted], boxes[order], atol=1e-3)
        assert [d["class_name"] for d in got_sorted] == [NAMES[int(c) - 1] for c in classes[order]]
        assert (drawn != src).any()  # something was drawn


def test_saved_model_predict_subprocess(setup, tmp_path):
    version = write_fake_export(
        str(tmp_path / "export" / "fake" / "1"),
        NAMES,
        boxes=FAKE_BOXES,
        scores=FAKE_SCORES,
        classes=FAKE_CLASSES,
    )
    out = tmp_path / "out_sm"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rfcn_tf.predict",
            str(setup["images"] / "a.png"),
            "--saved-model",
            str(tmp_path / "export" / "fake"),
            "--out",
            str(out),
            "--score-threshold",
            "0.7",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == (f"predicted 1 images, 1 detections with score >= 0.7 -> {out}")
    with open(out / "detections.json") as f:
        report = json.load(f)
    assert report["model"] == {"saved_model": version}
    (record,) = report["images"]
    (det,) = record["detections"]  # the 0.6 detection is below the threshold
    assert det["class_name"] == "circle" and det["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(det["box_yxyx"], [5, 7, 30, 42], atol=1e-4)  # 50 x 70 image
    with Image.open(out / "a.png") as im:
        assert im.size == (70, 50)


def test_help_and_bad_arguments(setup, capsys):
    with pytest.raises(SystemExit) as exc:
        predict_cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "IMAGES",
        "--checkpoint",
        "--saved-model",
        "--config",
        "--set",
        "--out",
        "--score-threshold",
        "--no-progress",
    ):
        assert flag in text
    code = predict_cli.main(
        [
            str(setup["images"] / "a.png"),
            "--checkpoint",
            str(setup["prefix"]),
            "--out",
            str(setup["root"] / "o"),
            "--score-threshold",
            "1.5",
        ]
    )
    assert code == 1 and "--score-threshold must be in [0, 1], got 1.5" in capsys.readouterr().err
    code = predict_cli.main(
        [
            str(setup["root"] / "none*.png"),
            "--checkpoint",
            str(setup["prefix"]),
            "--out",
            str(setup["root"] / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "no file matches this pattern" in err and "no image to process" in err
    # a checkpoint for 3 classes with 2 class names configured
    code = predict_cli.main(
        [
            str(setup["images"] / "a.png"),
            "--checkpoint",
            str(setup["prefix"]),
            "--out",
            str(setup["root"] / "o"),
            "--set",
            "data.class_names=[x, y]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "trained for 3 classes but data.class_names has 2" in err
