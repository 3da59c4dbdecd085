"""A run folder saved before the per-component model sections still loads: its flat
config.yaml migrates with one ConfigWarning, and its checkpoint restores, because the model's
variables keep the checkpoint names of that version."""

import dataclasses
import warnings

import numpy as np
import pytest
import tensorflow as tf
import yaml

from rfcn_tf import config as config_lib
from rfcn_tf.model.builder import build_detector

# Checkpoint keys of the RPN and R-FCN head variables as the flat-config version wrote them.
OLD_HEAD_KEYS = sorted(
    f"model/{layer}/{conv}/{var}/.ATTRIBUTES/VARIABLE_VALUE"
    for layer, convs in (
        ("rpn_head", ("conv", "objectness", "box_deltas")),
        ("rfcn_head", ("reduce", "class_maps", "box_maps")),
    )
    for conv in convs
    for var in ("_kernel", "bias")
)

TINY = [
    "model.backbone.small_widths=[8,16,16,32]",
    "model.anchors.scales=[16.0,32.0]",
    "model.rpn.channels=16",
    "model.head.channels=16",
    "model.head.k=3",
    "model.head.psroi_impl=tf",
    "model.postprocess.max_detections=10",
]


def _flat_model_section(cfg):
    """The model mapping as the flat-config version saved it in config.yaml."""
    flat = {"seed": cfg.model.seed}
    for old, new in config_lib.OLD_MODEL_KEYS.items():
        section, name = new.split(".")
        flat[old] = getattr(getattr(cfg.model, section), name)
    return flat


def test_an_old_run_folder_loads_its_config_and_checkpoint(tmp_path):
    cfg = config_lib.load_config(None, TINY)
    model = build_detector(cfg.model, num_classes=3)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "checkpoints" / "ckpt-7"))
    keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert sorted(k for k in keys if "/rpn_head/" in k or "/rfcn_head/" in k) == OLD_HEAD_KEYS

    saved = dict(cfg.to_dict(), model=_flat_model_section(cfg))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(config_lib.ConfigError, match="moved to"):
        config_lib.load_config(str(tmp_path / "config.yaml"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = config_lib.load_config(str(tmp_path / "config.yaml"), old_layout="migrate")
    assert [w.category for w in caught] == [config_lib.ConfigWarning]
    assert dataclasses.asdict(loaded.model) == dataclasses.asdict(cfg.model)

    again = build_detector(loaded.model, num_classes=3)
    tf.train.Checkpoint(model=again).read(prefix).assert_existing_objects_matched()
    images, shapes = tf.zeros([1, 64, 64, 3], tf.uint8), tf.constant([[64, 64]], tf.int32)
    a, b = model.detect(images, shapes), again.detect(images, shapes)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_the_run_folder_module_migrates_an_old_config_next_to_a_checkpoint(tmp_path):
    run_dir = pytest.importorskip("rfcn_tf.run_dir")
    cfg = config_lib.load_config(None, TINY + ["model.roi.sampling=balanced"])
    (tmp_path / "checkpoints").mkdir()
    saved = dict(cfg.to_dict(), model=_flat_model_section(cfg))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.warns(config_lib.ConfigWarning, match="old flat model keys"):
        found, where = run_dir.resolve_config(
            None,
            ["model.postprocess.nms_iou=0.4"],
            checkpoint=str(tmp_path / "checkpoints" / "ckpt-7"),
        )
    assert where.endswith("config.yaml") and found.model.roi.sampling == "balanced"
    assert found.model.postprocess.nms_iou == 0.4
