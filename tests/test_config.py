"""The config tree: presets load, overrides apply and type-check, unknown keys name the nearest one."""

import dataclasses
import warnings

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
    assert cfg.model.backbone.name == "small"


def test_overrides_parse_yaml_values_and_coerce_ints_to_floats():
    cfg = config_lib.load_config(
        None,
        [
            "train.lr=1",
            "data.scales=[300, 400]",
            "model.roi.ohem_nms_iou=0.7",
            "data.class_names=null",
            "train.mixed_precision=true",
        ],
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.scales == [300, 400]
    assert cfg.model.roi.ohem_nms_iou == 0.7
    assert cfg.train.mixed_precision is True


def test_nested_override_reaches_the_shapes_subtree():
    cfg = config_lib.load_config(None, ["data.shapes.image_size=128"])
    assert cfg.data.shapes.image_size == 128


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", r"unknown config key 'train.lrr'; did you mean 'train.lr'"),
        ("modle.head.k=3", r"unknown config key 'modle'; did you mean 'model'"),
        ("data.shapes.imagesize=3", r"did you mean 'data.shapes.image_size'"),
    ],
)
def test_unknown_keys_name_the_nearest_valid_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=1.5", r"train.steps must be an integer, got 1.5"),
        ("data.scales=600", r"data.scales must be a list"),
        (
            "model.backbone.name=vgg",
            r"model.backbone.name must be one of small, resnet50, resnet101, got 'vgg'",
        ),
        ("train.lr", r"override must look like key=value"),
        ("model.head.k=0", r"model.head.k must be >= 1, got 0"),
        ("model.rpn.nms_iou=1.5", r"model.rpn.nms_iou must be in \[0, 1\], got 1.5"),
        (
            "model.roi.foreground_iou=-0.1",
            r"model.roi.foreground_iou must be in \[0, 1\], got -0.1",
        ),
        (
            "model.roi.background_iou_low=0.6",
            r"model.roi.background_iou_low must be <= model.roi.foreground_iou \(0.5\), got 0.6",
        ),
        ("model.rpn.negative_iou=0.8", r"model.rpn.negative_iou must be <= model.rpn.positive_iou"),
        ("model.rpn.batch_size_per_image=0", r"model.rpn.batch_size_per_image must be > 0, got 0"),
        (
            "model.roi.batch_size_per_image=-2",
            r"model.roi.batch_size_per_image must be > 0, got -2",
        ),
        (
            "model.roi.sampling=hard",
            r"model.roi.sampling must be one of ohem, balanced, got 'hard'",
        ),
        ("model.roi.ohem_nms_iou=2", r"model.roi.ohem_nms_iou must be in \[0, 1\], got 2.0"),
        ("model.head.pooling_mode=max", r"model.head.pooling_mode must be one of avg, bilinear"),
        ("model.head.psroi_impl=cuda", r"model.head.psroi_impl must be one of auto, custom, tf"),
        ("model.head.box_weights=[1,1,1]", r"model.head.box_weights must be a list of 4 positive"),
        ("model.head.grid=[7]", r"model.head.grid must be a list of 2 positive"),
        (
            "model.backbone.small_norm=layer",
            r"model.backbone.small_norm must be one of batch, group",
        ),
        ("model.backbone.small_widths=[8,8,8]", r"model.backbone.small_widths must be a list of 4"),
        ("model.anchors.scales=[]", r"model.anchors.scales must be a list of positive numbers"),
        ("model.postprocess.max_detections=0", r"model.postprocess.max_detections must be > 0"),
        (
            "model.postprocess.score_threshold=1.5",
            r"model.postprocess.score_threshold must be in \[0, 1\], got 1.5",
        ),
    ],
)
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


@pytest.mark.parametrize(
    "override, new_place",
    [
        ("model.rpn_nms_iou=0.5", "model.rpn.nms_iou"),
        ("model.ps_k=3", "model.head.k"),
        ("model.backbone=resnet50", "model.backbone.name"),
        ("model.backbone_weights=null", "model.backbone.weights"),
        ("model.anchor_scales=[32.0]", "model.anchors.scales"),
        ("model.roi_batch_size=64", "model.roi.batch_size_per_image"),
        ("model.rfcn_loss_weight=2", "model.head.loss_weight"),
        ("model.max_detections=10", "model.postprocess.max_detections"),
    ],
)
def test_old_flat_keys_name_their_new_place(override, new_place):
    old = override.split("=")[0]
    with pytest.raises(config_lib.ConfigError, match=f"'{old}' moved to '{new_place}'"):
        config_lib.load_config(None, [override])


def test_every_old_flat_key_has_a_valid_new_place():
    cfg = config_lib.ModelConfig()
    for old, new in config_lib.OLD_MODEL_KEYS.items():
        section, name = new.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(cfg, section))}, old


def test_a_preset_file_with_old_keys_names_the_file_and_new_place(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  rpn_nms_iou: 0.6\n")
    message = r"old.yaml: config key 'model.rpn_nms_iou' moved to 'model.rpn.nms_iou'"
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(str(path))


OLD_RUN_CONFIG = """\
model:
  backbone: resnet50
  backbone_weights: null
  small_widths: [8, 16, 16, 32]
  anchor_scales: [16.0, 32.0]
  rpn_nms_iou: 0.6
  rpn_batch_size: 64
  ps_k: 3
  roi_sampling: balanced
  box_weights: [10.0, 10.0, 5.0, 5.0]
  score_threshold: 0.2
  rfcn_loss_weight: 2.0
  seed: 3
train:
  lr: 1e-3
"""


def test_an_old_run_config_migrates_with_one_warning(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_RUN_CONFIG)
    with pytest.raises(config_lib.ConfigError, match="moved to 'model.backbone.name'"):
        config_lib.load_config(str(path))
    with pytest.warns(config_lib.ConfigWarning) as record:
        cfg = config_lib.load_config(
            str(path), ["model.postprocess.nms_iou=0.4"], old_layout="migrate"
        )
    assert len(record) == 1 and "old flat model keys (11" in str(record[0].message)
    m = cfg.model
    assert (m.backbone.name, m.backbone.weights, m.backbone.small_widths) == (
        "resnet50",
        None,
        [8, 16, 16, 32],
    )
    assert m.anchors.scales == [16.0, 32.0] and m.rpn.nms_iou == 0.6
    assert m.rpn.batch_size_per_image == 64 and m.head.k == 3 and m.roi.sampling == "balanced"
    assert m.postprocess.score_threshold == 0.2 and m.postprocess.nms_iou == 0.4
    assert m.head.loss_weight == 2.0 and m.seed == 3 and cfg.train.lr == 0.001
    # a run config in the new layout migrates silently to itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = config_lib.config_from_dict(cfg.to_dict(), old_layout="migrate")
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_migration_refuses_a_setting_given_both_ways():
    with pytest.raises(config_lib.ConfigError, match=r"model.rpn.nms_iou is given twice"):
        config_lib.migrate_old_model_layout({"rpn_nms_iou": 0.6, "rpn": {"nms_iou": 0.5}})
    sections, moved = config_lib.migrate_old_model_layout({"ps_k": 3, "seed": 1})
    assert sections == {"head": {"k": 3}, "seed": 1} and moved == ["model.ps_k -> model.head.k"]


def test_resume_diff_ignores_inference_only_settings_in_either_layout():
    cfg = config_lib.load_config(
        None,
        [
            "model.postprocess.score_threshold=0.3",
            "model.head.psroi_impl=tf",
            "model.rpn.channels=64",
        ],
    )
    saved = config_lib.Config().to_dict()["model"]
    saved_flat = {"rpn_channels": 512, "score_threshold": 0.05, "backbone": "small"}
    fresh = config_lib.load_config(None)
    expected_rpn = f"model.rpn.channels: {fresh.model.rpn.channels} -> 64"
    assert expected_rpn in config_lib.model_resume_diff(fresh.to_dict()["model"], cfg)
    assert not any(
        "score_threshold" in d or "psroi_impl" in d
        for d in config_lib.model_resume_diff(saved, cfg)
    )
    assert config_lib.model_resume_diff(saved_flat, cfg) == [
        d for d in config_lib.model_resume_diff(config_lib.Config().to_dict()["model"], cfg)
    ]
    assert config_lib.model_resume_diff(cfg.to_dict()["model"], cfg) == []


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 0.001),
        ("5E+2", 500.0),
        ("-2.5e-4", -0.00025),
        ("1.0e3", 1000.0),
        ("3", 3),
        ("1_000", 1000),
        ("e3", "e3"),
        ("1e", "1e"),
    ],
)
def test_exponent_floats_parse_as_numbers(text, value):
    assert config_lib.parse_yaml(text) == value
    assert type(config_lib.parse_yaml(text)) is type(value)


def test_exponent_floats_in_files_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  lr: 2e-3\n  weight_decay: 5e-4\n")
    cfg = config_lib.load_config(str(path), ["model.rpn.min_size=1e1"])
    assert cfg.train.lr == 0.002 and cfg.train.weight_decay == 0.0005
    assert cfg.model.rpn.min_size == 10.0


def test_every_model_section_is_printed_with_its_keys():
    printed = config_lib.parse_yaml(config_lib.Config().to_yaml())["model"]
    cfg = config_lib.ModelConfig()
    for field in dataclasses.fields(cfg):
        section = getattr(cfg, field.name)
        if dataclasses.is_dataclass(section):
            assert set(printed[field.name]) == {f.name for f in dataclasses.fields(section)}


def test_validate_calls_each_sections_hook(monkeypatch):
    calls = []
    for cls in (config_lib.ModelConfig, config_lib.DataConfig):
        monkeypatch.setattr(
            cls, "validate", lambda self, where, _calls=calls: _calls.append(where), raising=False
        )
    config_lib.validate(config_lib.Config())
    assert calls == ["model", "data"]
