"""model.anchors.scales / ratios: auto, fitted to the training split when training starts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from helpers.data_fixtures import make_voc

from rfcn_tf import run_dir
from rfcn_tf.config import ConfigError, config_from_dict, load_config
from rfcn_tf.data import anchor_stats
from rfcn_tf.data import inspect as inspect_cli
from rfcn_tf.data.anchor_stats import resolve_auto_anchors
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources import voc_xml as voc
from rfcn_tf.training import load_run_config


def test_auto_is_a_value_and_other_strings_are_not():
    cfg = load_config("bccd", ["model.anchors.scales=auto", "model.anchors.ratios=auto"])
    assert (cfg.model.anchors.scales, cfg.model.anchors.ratios) == ("auto", "auto")
    with pytest.raises(
        ConfigError,
        match=r"model.anchors.scales must be a list of positive "
        r'numbers or "auto", got \'big\'',
    ):
        load_config("bccd", ["model.anchors.scales=big"])
    with pytest.raises(ConfigError, match=r"model.anchors.ratios must be a list"):
        load_config("bccd", ["model.anchors.ratios=3"])


def test_numbers_pass_through_and_fixed_ratios_stay():
    cfg = load_config("bccd")
    assert resolve_auto_anchors(cfg) is cfg
    boxes = np.array([[20.0, 20.0], [40.0, 40.0], [80.0, 80.0], [160.0, 160.0]])
    cfg = load_config("bccd", ["model.anchors.scales=auto"])
    resolved = resolve_auto_anchors(cfg, boxes_hw=boxes)
    expected = anchor_stats.suggest_anchors(boxes)
    assert resolved.model.anchors.scales == expected["scales"]
    assert resolved.model.anchors.ratios == [0.5, 1.0, 2.0]  # not auto: kept
    assert cfg.model.anchors.scales == "auto"  # the input is not modified
    with pytest.raises(ConfigError, match="has none"):
        resolve_auto_anchors(cfg, boxes_hw=np.zeros((0, 2)))


def test_auto_writes_numbers_to_the_run_config(tmp_path):
    root = make_voc(tmp_path / "voc")
    work_dir = tmp_path / "run"
    cfg = load_run_config(
        "bccd",
        [
            f"data.voc_root={root}",
            "data.train_split=train",
            "data.val_split=val",
            "data.class_names=[cat, dog]",
            "data.scales=[48]",
            "data.max_size=64",
            "data.cache=false",
            "model.anchors.scales=auto",
            "model.anchors.ratios=auto",
            "train.epochs=null",
            "train.warmup_epochs=null",
        ],
        work_dir=str(work_dir),
    )
    anchors = cfg.model.anchors
    assert isinstance(anchors.scales, list) and isinstance(anchors.ratios, list)
    # Independently: the train split's boxes at scale 48 (shorter side), as the fit saw them.
    from rfcn_tf.data.pipeline import build_source

    dataset, _ = build_source(cfg.data, split="train")
    boxes = anchor_stats.training_scale_boxes(dataset, scale=48, max_size=64)
    assert len(boxes) == 5  # img_d has a degenerate box (dropped)
    assert anchors.scales == anchor_stats.suggest_anchors(boxes)["scales"]
    run_dir.write_run_files(str(work_dir), cfg, class_names=["cat", "dog"])
    saved = yaml.safe_load((work_dir / run_dir.RUN_CONFIG_NAME).read_text())
    assert saved["model"]["anchors"] == {"scales": anchors.scales, "ratios": anchors.ratios}
    assert all(isinstance(v, float) for v in saved["model"]["anchors"]["scales"])
    # The saved file loads back with the numbers (evaluate, export, rfcn_tf.load read it).
    assert config_from_dict(saved).model.anchors == anchors


def _bccd():
    try:
        return voc.resolve_voc_root(voc.BCCD_ROOT)
    except DataError:
        return None


@pytest.mark.skipif(_bccd() is None, reason="BCCD folder not found (../shared/data/BCCD)")
def test_bccd_auto_anchors_match_95_percent():
    cfg = load_config("bccd_val", ["model.anchors.scales=auto", "model.anchors.ratios=auto"])
    resolved = resolve_auto_anchors(cfg)
    anchors = resolved.model.anchors
    from rfcn_tf.data.pipeline import build_source

    dataset, _ = build_source(cfg.data, split="train")
    boxes = anchor_stats.training_scale_boxes(dataset, scale=480, max_size=640)
    # A direct shape-only IoU (anchor centred on the box) against every anchor.
    hw = np.array(
        [(s * np.sqrt(r), s / np.sqrt(r)) for s in anchors.scales for r in anchors.ratios]
    )
    inter = np.minimum(boxes[:, None, 0], hw[None, :, 0]) * np.minimum(
        boxes[:, None, 1], hw[None, :, 1]
    )
    iou = inter / (boxes[:, :1] * boxes[:, 1:] + (hw[:, 0] * hw[:, 1])[None] - inter)
    assert np.mean(iou.max(axis=1) >= 0.5) >= 0.95
    assert 10 < anchors.scales[0] < anchors.scales[-1] < 300


def test_inspect_suggest_shows_what_auto_resolves_to(tmp_path, capsys):
    root = make_voc(tmp_path / "voc")
    assert (
        inspect_cli.main(
            [
                "--config",
                "bccd",
                "--set",
                f"data.voc_root={root}",
                "--set",
                "data.train_split=train",
                "--set",
                "data.scales=[48]",
                "--set",
                "data.max_size=64",
                "--set",
                "model.anchors.scales=auto",
                "--no-stats",
                "--num",
                "0",
                "--suggest",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    suggested = re.search(r"model.anchors.scales=(\[[^\]]*\])", out).group(1)
    assert f"configured (scales {suggested}, ratios [0.5, 1.0, 2.0])" in out
