"""python -m rfcn_tf.data.convert: any source -> OD API TFRecord shards that read back the same."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers.data_fixtures import data_config

from rfcn_tf.data import convert
from rfcn_tf.data import label_map as lm
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.inspection import collect_statistics
from rfcn_tf.data.pipeline import build_source
from rfcn_tf.data.sources import voc_xml as voc


def _bccd_root():
    try:
        return voc.resolve_voc_root(voc.BCCD_ROOT)
    except DataError:
        return None


BCCD = _bccd_root()
needs_bccd = pytest.mark.skipif(
    BCCD is None, reason=f"BCCD folder not found (set ${voc.BCCD_ENV_VAR} or data.voc_root)"
)


def _by_id(dataset):
    return {int(ex["image_id"]): ex for ex in dataset.as_numpy_iterator()}


def _assert_same_examples(a, b):
    assert sorted(a) == sorted(b)
    for image_id, ex in a.items():
        other = b[image_id]
        for key in ("image", "boxes", "labels", "is_difficult", "is_crowd"):
            np.testing.assert_array_equal(ex[key], other[key], err_msg=f"{image_id} {key}")


@needs_bccd
def test_bccd_round_trip_four_shards_same_boxes_and_statistics(tmp_path):
    cfg = data_config(source="voc", voc_root=str(BCCD))
    summary = convert.convert_split(
        cfg, split="val", out_dir=tmp_path, num_shards=4, progress=False
    )
    names = [f"val-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert summary["files"] == names and summary["num_examples"] == 87
    assert summary["copied_images"] == 87  # JPEG bytes copied, not re-encoded
    assert json.loads((tmp_path / "val-summary.json").read_text()) == summary
    assert lm.read_label_map(tmp_path / "label_map.pbtxt") == [
        lm.LabelMapItem(1, "Platelets"),
        lm.LabelMapItem(2, "RBC"),
        lm.LabelMapItem(3, "WBC"),
    ]

    tcfg = data_config(source="tfrecord", tfrecord_pattern=str(tmp_path / "{split}-*.tfrecord"))
    source, info = build_source(cfg, split="val")
    converted, tinfo = build_source(tcfg, split="val")
    assert tinfo.class_names == info.class_names and tinfo.num_examples == 87
    assert tinfo.max_boxes_per_image == info.max_boxes_per_image == summary["max_boxes_per_image"]
    original, read_back = _by_id(source), _by_id(converted)
    _assert_same_examples(original, read_back)
    assert collect_statistics(source, info.class_names, progress=False) == collect_statistics(
        converted, tinfo.class_names, progress=False
    )
    # Read back in the source's order (round-robin shards, file-interleaved reading).
    assert list(read_back) == list(original)


def test_shapes_split_stored_as_png_and_reconverted(tmp_path):
    cfg = data_config(source="shapes", shapes={"image_size": 48, "num_val": 6})
    first = convert.convert_split(
        cfg, split="validation", out_dir=tmp_path, num_shards=3, progress=False
    )
    assert first["copied_images"] == 0 and first["num_examples"] == 6
    tcfg = data_config(source="tfrecord", tfrecord_pattern=str(tmp_path / "validation-*.tfrecord"))
    _assert_same_examples(
        _by_id(build_source(cfg, split="validation")[0]),
        _by_id(build_source(tcfg, split="validation")[0]),
    )
    # Converting again with fewer shards replaces the old ones (the glob sees only the new).
    convert.convert_split(cfg, split="validation", out_dir=tmp_path, num_shards=2, progress=False)
    assert sorted(p.name for p in tmp_path.glob("validation-*.tfrecord")) == [
        "validation-00000-of-00002.tfrecord",
        "validation-00001-of-00002.tfrecord",
    ]
    assert build_source(tcfg, split="validation")[1].num_examples == 6


def test_endless_split_needs_max_images_and_label_maps_must_agree(tmp_path):
    cfg = data_config(source="shapes", shapes={"image_size": 32, "num_val": 2})
    with pytest.raises(DataError, match="is endless: give --max-images"):
        convert.convert_split(cfg, split="train", out_dir=tmp_path, num_shards=1)
    summary = convert.convert_split(
        cfg, split="train", out_dir=tmp_path, num_shards=2, max_images=3, progress=False
    )
    assert summary["num_examples"] == 3
    other = dataclasses.replace(
        cfg, shapes=dataclasses.replace(cfg.shapes, classes=["ring", "cross"])
    )
    with pytest.raises(DataError, match="already lists other classes"):
        convert.convert_split(other, split="validation", out_dir=tmp_path, num_shards=1)
    with pytest.raises(DataError, match="--shards must be >= 1, got 0"):
        convert.convert_split(cfg, split="validation", out_dir=tmp_path, num_shards=0)


def test_cli_help_needs_no_tensorflow_and_errors_are_one_line(tmp_path):
    code = (
        "import sys; from rfcn_tf.data import convert; convert.build_parser().format_help();"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rfcn_tf.data.convert",
            "--set",
            "data.source=voc",
            "--set",
            f"data.voc_root={tmp_path / 'missing'}",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "VOC folder not found" in errors[0]
