"""python -m rfcn_tf.data.inspect --suggest: anchors fitted to the split's boxes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rfcn_tf.data import anchor_stats
from rfcn_tf.data import inspect as inspect_cli
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources import voc_xml as voc


def _centred_iou(box_hw, anchor_hw):
    inter = min(box_hw[0], anchor_hw[0]) * min(box_hw[1], anchor_hw[1])
    return inter / (box_hw[0] * box_hw[1] + anchor_hw[0] * anchor_hw[1] - inter)


def test_unmatched_share_against_a_direct_iou():
    boxes = np.array([[10.0, 10.0], [10.0, 40.0], [30.0, 30.0], [14.0, 14.0]])
    scales, ratios = [10.0, 20.0], [1.0, 0.25]
    anchors = [(s * np.sqrt(r), s / np.sqrt(r)) for s in scales for r in ratios]
    expected = np.mean([max(_centred_iou(b, a) for a in anchors) < 0.5 for b in boxes])
    assert anchor_stats.unmatched_share(boxes, scales, ratios) == pytest.approx(expected)
    # 10x10: exact; 10x40 is 20 at ratio 0.25 exactly; 14x14 vs 10x10: 0.51; 30x30 vs 20x20:
    # 0.44, the one unmatched box.
    assert expected == 0.25


def test_suggestion_spans_sizes_and_ratios():
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.uniform(np.log(20), np.log(300), 2000))
    ratios = np.exp(rng.uniform(np.log(0.4), np.log(2.5), 2000))
    boxes = np.stack([sizes * np.sqrt(ratios), sizes / np.sqrt(ratios)], axis=1)
    result = anchor_stats.suggest_anchors(boxes)
    assert result["scales"][0] == pytest.approx(np.percentile(sizes, 2), rel=1e-3)
    assert result["scales"][-1] == pytest.approx(np.percentile(sizes, 98), rel=1e-3)
    assert result["ratios"][0] < 0.6 and result["ratios"][-1] > 1.7
    assert result["unmatched"] == anchor_stats.unmatched_share(
        boxes, result["scales"], result["ratios"]
    )
    with pytest.raises(ValueError, match="no boxes"):
        anchor_stats.suggest_anchors(np.zeros((0, 2)))


def _bccd():
    try:
        return voc.resolve_voc_root(voc.BCCD_ROOT)
    except DataError:
        return None


@pytest.mark.skipif(_bccd() is None, reason="BCCD folder not found")
def test_bccd_suggestion_matches_95_percent_of_boxes(capsys):
    assert inspect_cli.main(["--config", "bccd", "--no-stats", "--num", "0", "--suggest"]) == 0
    out = capsys.readouterr().out
    scales = [
        float(v) for v in re.search(r"model.anchors.scales=\[([^\]]*)\]", out).group(1).split(",")
    ]
    ratios = [
        float(v) for v in re.search(r"model.anchors.ratios=\[([^\]]*)\]", out).group(1).split(",")
    ]
    # An independent check on the BCCD boxes at the 480 px training scale (native size).
    from rfcn_tf.config import load_config
    from rfcn_tf.data.pipeline import build_source

    cfg = load_config("bccd").data
    dataset, _ = build_source(cfg, split=cfg.train_split)
    boxes = anchor_stats.training_scale_boxes(dataset, scale=480, max_size=640)
    anchors = [(s * np.sqrt(r), s / np.sqrt(r)) for s in scales for r in ratios]
    matched = np.mean([max(_centred_iou(b, a) for a in anchors) >= 0.5 for b in boxes])
    assert len(boxes) == 3941 and matched >= 0.95
    assert "of the boxes are smaller than 2 feature cells (32 px at stride 16)" in out
