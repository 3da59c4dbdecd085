"""Config faults through the train CLI (in process; nothing here builds a model): every value
with a valid range is checked, naming the key, before anything is written to the work dir
(issue 12 item 8); scientific notation is a number (item 11); unsafe YAML is refused.
"""

from __future__ import annotations

import pytest

from rfcn_tf import train as train_cli

BAD_VALUES = [
    ("train.lr=0", "train.lr must be a number > 0, got 0.0"),
    ("train.lr=-1e-3", "train.lr must be a number > 0, got -0.001"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.momentum=1.5", "train.momentum must be in [0, 1), got 1.5"),
    ("train.warmup_factor=0", "train.warmup_factor must be in (0, 1], got 0.0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1, got 0"),
    ("train.clip_norm=-1", "train.clip_norm must be > 0 or null (off), got -1.0"),
    ("train.epochs=0", "train.epochs must be > 0 or null, got 0.0"),
    ("train.ema_decay=1", "train.ema_decay must be in (0, 1) or null (off), got 1.0"),
    ("data.max_boxes=0", "data.max_boxes must be >= 1, got 0"),
    ("data.aspect_ratio_boundaries=[2,1]", "data.aspect_ratio_boundaries must be increasing"),
    (
        "data.scales=[600,0]",
        "data.scales must be a non-empty list of sizes >= 1 (pixels), got [600, 0]",
    ),
    ("data.shapes.max_objects=0", "data.shapes.max_objects must be >= 1"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("eval.score_threshold=1.5", "eval.score_threshold must be in [0, 1] or null, got 1.5"),
    ("export.version=0", "export.version must be >= 1 or null (next), got 0"),
    ("export.model_name=a/b", "export.model_name must be a folder name"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_out_of_range_value_is_named_before_anything_is_written(tmp_path, capfd, override, message):
    work_dir = tmp_path / "run"
    for extra in ([], ["--print-config"]):  # --print-config validates too
        code = train_cli.main(
            ["--work-dir", str(work_dir), "--no-progress", "--set", override, *extra]
        )
        err = capfd.readouterr().err
        assert code == 1
        assert f"error: {message}" in err, err
        assert "Traceback" not in err
        assert not work_dir.exists()  # validated before the work dir is created


def test_scientific_notation_is_a_number(tmp_path, capfd):
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  lr: 2e-3\n  weight_decay: 1E-4\n")
    code = train_cli.main(
        ["--config", str(path), "--set", "train.warmup_factor=1e-3", "--print-config"]
    )
    out = capfd.readouterr().out
    assert code == 0
    assert "lr: 0.002" in out and "weight_decay: 0.0001" in out and "warmup_factor: 0.001" in out


def test_unsafe_yaml_is_refused_and_not_run(tmp_path, capfd):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    code = train_cli.main(["--config", str(path), "--print-config"])
    err = capfd.readouterr().err
    assert code == 1
    assert str(path) in err and "Traceback" not in err
    assert not marker.exists()
