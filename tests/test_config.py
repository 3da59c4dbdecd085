"""The config tree: presets load, overrides apply and type-check, unknown keys name the nearest one."""

import dataclasses

import pytest

from rfcn_tf import config as config_lib


def test_every_preset_loads_and_validates():
    presets = config_lib.available_presets()
    assert "shapes_tiny" in presets
    for name in presets:
        cfg = config_lib.load_config(name)
        assert isinstance(cfg.model, config_lib.ModelConfig)


def test_default_is_shapes_tiny():
    cfg = config_lib.load_config()
    assert cfg.data.source == "shapes"
    assert cfg.model.backbone == "small"


def test_overrides_parse_yaml_values_and_coerce_ints_to_floats():
    cfg = config_lib.load_config(None, ["train.lr=1", "data.scales=[300, 400]", "model.ohem_nms_iou=0.7",
                                        "data.class_names=null", "train.mixed_precision=true"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.scales == [300, 400]
    assert cfg.model.ohem_nms_iou == 0.7
    assert cfg.train.mixed_precision is True


def test_nested_override_reaches_the_shapes_subtree():
    cfg = config_lib.load_config(None, ["data.shapes.image_size=128"])
    assert cfg.data.shapes.image_size == 128


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", r"unknown config key 'train.lrr'; did you mean 'train.lr'"),
    ("modle.ps_k=3", r"unknown config key 'modle'; did you mean 'model'"),
    ("data.shapes.imagesize=3", r"did you mean 'data.shapes.image_size'"),
])
def test_unknown_keys_name_the_nearest_valid_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("train.steps=1.5", r"train.steps must be an integer, got 1.5"),
    ("data.scales=600", r"data.scales must be a list"),
    ("model.backbone=vgg", r"model.backbone must be one of small, resnet50, resnet101, got 'vgg'"),
    ("train.lr", r"override must look like key=value"),
    ("model.ps_k=0", r"model.ps_k must be >= 1"),
])
def test_bad_values_are_rejected_with_the_culprit(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(None, [override])


def test_unknown_preset_suggests_the_nearest(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="did you mean 'shapes_tiny'"):
        config_lib.load_config("shapes_tin")
    with pytest.raises(config_lib.ConfigError, match="config file not found"):
        config_lib.load_config(str(tmp_path / "missing.yaml"))


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(config_lib.ConfigError, match=r"bad.yaml: unknown config key 'train.stepz'"):
        config_lib.load_config(str(path))


def test_round_trip_through_a_dict():
    cfg = config_lib.load_config(None, ["train.lr=0.5"])
    again = config_lib.config_from_dict(cfg.to_dict())
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_defaults_are_not_shared_between_instances():
    a, b = config_lib.Config(), config_lib.Config()
    a.data.scales.append(800)
    assert b.data.scales == [600]
