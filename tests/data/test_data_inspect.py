"""python -m rfcn_tf.data.inspect: grid, statistics table, summary, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rfcn_tf.data import inspect as inspect_cli
from rfcn_tf.data import inspection
from rfcn_tf.data.sources import voc_xml

SMALL_SHAPES = [
    "--set",
    "data.shapes.image_size=64",
    "--set",
    "data.scales=[64]",
    "--set",
    "data.max_size=64",
]


def test_grid_table_and_summary(tmp_path, capsys):
    out = tmp_path / "sub" / "grid.png"
    status = inspect_cli.main(
        [
            "--config",
            "shapes_tiny",
            *SMALL_SHAPES,
            "--split",
            "validation",
            "--num",
            "5",
            "--cols",
            "3",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    grid = np.asarray(Image.open(out))
    # 5 cells of 64x64 in 3 columns, 2-pixel padding (make_grid): 2 rows
    assert grid.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    lines = captured.out.splitlines()
    assert lines[0].startswith("images: 100 (")  # shapes_tiny: num_val 100
    assert any(line.startswith("| circle |") for line in lines)
    assert lines[-1].startswith("inspected shapes split 'validation': 3 classes; 100 images")
    assert str(out) in lines[-1]


def test_statistics_match_annotations(voc_root):
    dataset, info = voc_xml.voc_source(voc_root, split="train")
    stats = inspection.collect_statistics(dataset, info.class_names, progress=False)
    assert stats["images"] == 4 and stats["empty_images"] == 1
    assert stats["image_min_hw"] == (32, 30) and stats["image_max_hw"] == (50, 60)
    by_name = {c["name"]: c for c in stats["classes"]}
    assert by_name["dog"]["boxes"] == 2 and by_name["cat"]["boxes"] == 3
    assert by_name["cat"]["difficult"] == 1
    assert by_name["zebra"]["boxes"] == 0 and by_name["zebra"]["size_min"] is None
    # dog boxes, continuous px (VOC 1-based inclusive): img_a (11, 5, 30, 20) is 16 high and
    # 20 wide; img_d (5, 6, 25, 30) is 25 x 21
    assert by_name["dog"]["size_min"] == pytest.approx(np.sqrt(16 * 20), rel=1e-5)
    assert by_name["dog"]["size_max"] == pytest.approx(np.sqrt(25 * 21), rel=1e-5)
    table = inspection.format_statistics(stats)
    assert "| zebra | 0 | 0 | 0 | - | - | - |" in table
    assert "| (all) | 5 | 1 | 0 | | | |" in table


def test_errors_exit_nonzero_with_one_message(tmp_path, capsys):
    assert inspect_cli.main(["--config", "no_such_preset", "--out", str(tmp_path / "g.png")]) == 1
    assert "error: unknown config 'no_such_preset'" in capsys.readouterr().err
    status = inspect_cli.main(
        [
            "--config",
            "bccd",
            "--set",
            f"data.voc_root={tmp_path}/absent",
            "--out",
            str(tmp_path / "g.png"),
        ]
    )
    assert status == 1
    assert "VOC folder not found" in capsys.readouterr().err
    assert inspect_cli.main(["--num", "-1", *SMALL_SHAPES]) == 1
    assert "--num must be >= 0" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--config",
        "--set",
        "--split",
        "--num",
        "--cols",
        "--augment",
        "--max-images",
        "--no-stats",
        "--out",
    ):
        assert flag in text
    parser = inspect_cli.build_parser()
    assert all(action.help for action in parser._actions)
