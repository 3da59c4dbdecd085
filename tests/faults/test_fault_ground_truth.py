"""Issue 12 item 1: ground truth past data.max_boxes is neither dropped nor truncated.

A VOC split with 130 boxes in one image (data.max_boxes=100, the default): evaluation scores
against every box (metrics.json's num_groundtruths is the split's annotation count) and the
training batches carry every box too.
"""

from __future__ import annotations

import json

import numpy as np
from fault_helpers import CLASSES, grid_boxes, make_voc, set_args, snapshot, tiny_overrides
from helpers.fake_savedmodel import write_fake_export

from rfcn_tf import evaluate as evaluate_cli
from rfcn_tf.config import load_config
from rfcn_tf.data.pipeline import build_dataset


def _dense_voc(root):
    images = {
        "dense": (96, 96, grid_boxes(130, size=96, cell=8)),
        "sparse": (48, 48, grid_boxes(3, size=48, cell=16)),
    }
    return make_voc(root, images, {"train": ["dense", "sparse"], "val": ["sparse", "dense"]})


def test_evaluation_and_training_keep_every_box(tmp_path, capsys):
    voc = _dense_voc(tmp_path / "voc")
    before = snapshot(voc)
    overrides = tiny_overrides(
        voc, tmp_path / "run", data__max_boxes=100, data__scales="[96]", data__max_size=96
    )
    version = write_fake_export(
        str(tmp_path / "export" / "fake" / "1"),
        CLASSES,
        boxes=[[0.1, 0.1, 0.3, 0.3]],
        scores=[0.9],
        classes=[1.0],
    )
    out = tmp_path / "eval"
    code = evaluate_cli.main(
        [
            "--config",
            "shapes_tiny",
            *set_args(overrides),
            "--saved-model",
            version,
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    assert metrics["num_groundtruths"] == 133  # 130 + 3: the split's annotation count
    per_class = {name: row["num_groundtruths"] for name, row in metrics["per_class"].items()}
    assert per_class == {"cell": 65 + 2, "dot": 65 + 1}

    cfg = load_config("shapes_tiny", overrides)
    for training in (True, False):
        batches = build_dataset(cfg.data, split="train", training=training, batch_size=2)
        features = next(iter(batches))
        counts = sorted(features["gt_mask"].numpy().sum(axis=1).tolist())
        assert counts == [3, 130], (training, counts)
        # Every real row is a box of the image (positive area), padding rows are -1.
        boxes = features["gt_boxes"].numpy()[features["gt_mask"].numpy()]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        padding = features["gt_classes"].numpy()[~features["gt_mask"].numpy()]
        assert (padding == -1).all()
    assert snapshot(voc) == before  # inputs untouched


def test_sources_without_counts_pad_to_the_batch(tmp_path, monkeypatch):
    """A source that cannot tell its box counts up front (TFDS) pads to the batch's largest."""
    from rfcn_tf.data import pipeline

    voc = _dense_voc(tmp_path / "voc")
    cfg = load_config(
        "shapes_tiny",
        tiny_overrides(
            voc, tmp_path / "run", data__max_boxes=5, data__scales="[96]", data__max_size=96
        ),
    )
    real = pipeline.build_source

    def unknown_counts(*args, **kwargs):
        dataset, info = real(*args, **kwargs)
        info.max_boxes_per_image = None
        return dataset, info

    monkeypatch.setattr(pipeline, "build_source", unknown_counts)
    batches = list(build_dataset(cfg.data, split="val", training=False, batch_size=1))
    assert [b["gt_mask"].shape[1] for b in batches] == [5, 130]  # at least max_boxes rows
    assert [int(np.sum(b["gt_mask"])) for b in batches] == [3, 130]
    train = next(iter(build_dataset(cfg.data, split="train", training=True, batch_size=2)))
    assert sorted(train["gt_mask"].numpy().sum(axis=1).tolist()) == [3, 130]
