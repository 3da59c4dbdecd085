"""benchmarks/small_data.py's recipes, and the paper presets' schedules in epochs (issue 16)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from rfcn_tf.config import DataConfig, load_config
from rfcn_tf.engine.features import resolve_schedule

ROOT = Path(__file__).resolve().parent.parent


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "small_data", ROOT / "benchmarks" / "small_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_are_valid_configs_on_35_images():
    bench = _benchmark()
    a = resolve_schedule(load_config("bccd", bench.recipe_a(300, "runs/x_a")), num_train_images=35)
    assert (a.data.train_split, a.data.max_train_images, a.train.steps) == ("train", 35, 300)
    assert a.train.eval_every == 0 and a.eval.split == "test" and a.train.warmup_steps == 30
    # (a) keeps the bccd preset's model and optimizer settings.
    bccd = load_config("bccd")
    assert a.model == bccd.model and (a.train.lr, a.train.schedule) == (0.02, "cosine")
    # ... and the augmentation of the recipe issue 16 measured, whatever the preset adds later.
    assert (a.data.random_flip, a.data.photometric) == (True, True)
    assert not (a.data.vertical_flip or a.data.rot90 or a.data.random_crop or a.data.scale_jitter)
    b = resolve_schedule(
        load_config("bccd35", bench.recipe_b(240, "runs/x_b")), num_train_images=35
    )
    assert b.train.steps == 240 and b.train.eval_every == 24 == b.train.checkpoint_every
    assert b.train.early_stop_patience == 0 and b.data.val_split == "val"
    assert b.model == bccd.model


def test_augmentations_follow_dataconfig():
    bench = _benchmark()
    names = {f.name for f in dataclasses.fields(DataConfig)}
    overrides = bench.available_augmentations()
    keys = [o.split("=")[0][len("data.") :] for o in overrides]
    assert set(keys) == set(bench.AUGMENTATIONS) & names
    if "scale_jitter" in keys:
        assert "data.scale_jitter=[0.8, 1.25]" in overrides
    load_config("bccd35", overrides)  # every one is a valid --set


@pytest.mark.parametrize(
    "preset, images, epochs, drop, steps, boundary",
    [
        ("voc07_resnet101", 16551, 14.5, 9.67, 29999, 20007),  # VOC 07+12 trainval
        ("coco_resnet101", 118287, 9.47, 7.44, 140023, 110007),  # COCO train2017
    ],
)
def test_paper_schedules_in_epochs(preset, images, epochs, drop, steps, boundary):
    cfg = load_config(preset)
    # The preset's steps are the paper's; its comment's epochs give them back (batch 8).
    assert cfg.train.batch_size == 8
    assert abs(cfg.train.steps - steps) < 25 and abs(cfg.train.lr_steps[0] - boundary) < 10
    text = (ROOT / "configs" / f"{preset}.yaml").read_text()
    assert f"--set train.epochs={epochs} --set train.lr_epochs=[{drop}]" in text
    resolved = resolve_schedule(
        load_config(preset, [f"train.epochs={epochs}", f"train.lr_epochs=[{drop}]"]),
        num_train_images=images,
    )
    assert (resolved.train.steps, resolved.train.lr_steps) == (steps, [boundary])


def test_tfds_split_size_from_the_source(monkeypatch):
    """The TFDS source's size (mocked voc/2007 + voc/2012: 3 + 3 examples) drives the epochs,
    as --print-config resolves them (nothing is downloaded)."""
    import tensorflow_datasets as tfds
    from helpers.tfds_fakes import NUM, _fake_as_dataset

    from rfcn_tf.training import load_run_config

    with tfds.testing.mock_data(
        as_dataset_fn=_fake_as_dataset(), policy=tfds.testing.MockPolicy.USE_CODE
    ):
        cfg = load_run_config("voc07_resnet101", ["train.epochs=4", "train.lr_epochs=[2]"])
    assert (cfg.train.steps, cfg.train.lr_steps) == (-(-4 * 2 * NUM // 8), [-(-2 * 2 * NUM // 8)])


def _selection_study():
    spec = importlib.util.spec_from_file_location(
        "checkpoint_selection", ROOT / "benchmarks" / "checkpoint_selection.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(curve_a, curve_b):
    return [
        {"step": 100 * (i + 1), "raw": {"valA": [a, 0.0], "valB": [b, 0.0]}}
        for i, (a, b) in enumerate(zip(curve_a, curve_b))
    ]


def test_selection_study_picks_with_the_engines_early_stop():
    study = _selection_study()
    rows = _rows([0.5, 0.7, 0.6, 0.65, 0.9, 0.8], [0.4, 0.6, 0.7, 0.5, 0.8, 0.85])
    picked, reached = study.pick(rows, "raw", "valA", patience=0)
    assert picked["step"] == 500 and reached[-1]["step"] == 600
    # Two validations without a gain after step 200 end the run at 400, before the 0.9.
    picked, reached = study.pick(rows, "raw", "valA", patience=2)
    assert picked["step"] == 200 and reached[-1]["step"] == 400
    # A tie is no improvement (the engine's rule: strictly better).
    picked, _ = study.pick(_rows([0.5, 0.5], [0, 0]), "raw", "valA", patience=0)
    assert picked["step"] == 100


def test_selection_study_splits_val_into_halves_without_writing_the_dataset(tmp_path):
    study = _selection_study()
    bccd = tmp_path / "BCCD"
    (bccd / "ImageSets" / "Main").mkdir(parents=True)
    (bccd / "Annotations").mkdir()
    (bccd / "JPEGImages").mkdir()
    for name, ids in (("train", ["t1"]), ("test", ["x1"]), ("val", ["v3", "v1", "v2", "v4", "v5"])):
        (bccd / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    before = sorted(p.name for p in (bccd / "ImageSets" / "Main").iterdir())
    root = Path(study.make_voc_root(str(tmp_path / "out"), str(bccd)))
    main = root / "ImageSets" / "Main"
    assert main.joinpath("valA.txt").read_text().split() == ["v1", "v3", "v5"]
    assert main.joinpath("valB.txt").read_text().split() == ["v2", "v4"]
    assert main.joinpath("val.txt").read_text().split() == ["v3", "v1", "v2", "v4", "v5"]
    assert (root / "JPEGImages").resolve() == (bccd / "JPEGImages").resolve()
    assert sorted(p.name for p in (bccd / "ImageSets" / "Main").iterdir()) == before
