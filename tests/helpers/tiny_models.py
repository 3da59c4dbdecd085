"""The tiny test models, one place for every test that builds one.

- ``tiny_model`` / ``tiny_kwargs`` / ``tiny_backbone``: RFCN from keyword arguments (the model
  tests), with ``make_images`` / ``make_features`` for their inputs (two 64x96 images, G = 3).
- ``preset_detector``: the shapes_tiny preset with overrides, built by the model builder (the
  export, engine and CLI tests use it through their own overrides).
- ``TINY_CLI_MODEL``: the model section of the predict/evaluate CLI tests' run folders;
  ``TINY_TRAIN_OVERRIDES``: the --set list of the train CLI tests.
"""

import keras
import numpy as np
import tensorflow as tf

from rfcn_tf.config import OLD_MODEL_KEYS
from rfcn_tf.model.backbones import SmallBackbone
from rfcn_tf.model.detector import RFCN
from rfcn_tf.model.sections import (
    AnchorsConfig,
    HeadConfig,
    PostprocessConfig,
    RoIConfig,
    RPNConfig,
)

TINY_SECTIONS = {
    "anchors": {"scales": [16.0, 32.0, 64.0], "ratios": [1.0]},
    "rpn": {
        "channels": 16,
        "pre_nms_top_n_train": 200,
        "pre_nms_top_n_test": 100,
        "post_nms_top_n_train": 40,
        "post_nms_top_n_test": 20,
        "batch_size_per_image": 64,
    },
    "roi": {"sampling": "ohem", "batch_size_per_image": 16},
    "head": {"channels": 16, "k": 3, "psroi_impl": "tf"},
    "postprocess": {"score_threshold": 0.0, "max_detections": 10},
}
SECTIONS = {
    "anchors": AnchorsConfig,
    "rpn": RPNConfig,
    "roi": RoIConfig,
    "head": HeadConfig,
    "postprocess": PostprocessConfig,
}


def tiny_kwargs(num_classes=3, seed=None, **overrides):
    """RFCN keyword arguments of the tiny test model: one dataclass per section. `overrides`
    use the flat names (`ps_k=7`, `rpn_loss_weight=2.0`), placed by OLD_MODEL_KEYS, or dotted
    ones (`**{"head.k": 7}`)."""
    values = {name: dict(fields) for name, fields in TINY_SECTIONS.items()}
    for key, value in overrides.items():
        section, field = OLD_MODEL_KEYS.get(key, key).split(".")
        values[section][field] = value
    kwargs = {name: SECTIONS[name](**fields) for name, fields in values.items()}
    return dict(kwargs, num_classes=num_classes, seed=seed)


def tiny_backbone():
    return SmallBackbone(widths=[8, 8, 16, 16], blocks=[1, 1, 1, 1])


def tiny_model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return RFCN(backbone=tiny_backbone(), **tiny_kwargs(**overrides))


def make_images(batch, height, width, seed=0):
    return tf.constant(
        np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3)), tf.uint8
    )


def make_features(seed=0):
    """Two 64x96 images (the second 48x80 plus padding), padded ground truth (G = 3)."""
    images = make_images(2, 64, 96, seed)
    return {
        "images": images,
        "image_shapes": tf.constant([[64, 96], [48, 80]], tf.int32),
        "gt_boxes": tf.constant(
            [
                [[8, 8, 40, 40], [20, 50, 60, 90], [-1, -1, -1, -1]],
                [[4, 4, 30, 36], [-1, -1, -1, -1], [-1, -1, -1, -1]],
            ],
            tf.float32,
        ),
        "gt_classes": tf.constant([[1, 3, -1], [2, -1, -1]], tf.int32),
        "gt_mask": tf.constant([[True, True, False], [True, False, False]]),
    }


def preset_detector(overrides, *, num_classes=3, seed=None, preset="shapes_tiny"):
    """(config, RFCN) of `preset` with `--set` style `overrides`, built by build_detector."""
    from rfcn_tf.config import load_config
    from rfcn_tf.model.builder import build_detector

    config = load_config(preset, list(overrides))
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return config, build_detector(config.model, num_classes=num_classes)


# The run folders of the predict and evaluate CLI tests.
TINY_CLI_MODEL = {
    "backbone": {"name": "small", "small_widths": [8, 16, 16, 32]},
    "anchors": {"scales": [16.0, 32.0, 64.0]},
    "rpn": {"channels": 16, "pre_nms_top_n_test": 64, "post_nms_top_n_test": 16},
    "head": {"channels": 16, "k": 3, "psroi_impl": "tf"},
    "postprocess": {"score_threshold": 0.01, "max_detections": 20},
}

# The --set list of the train CLI tests (shapes at 64 px, a small RPN and head).
TINY_TRAIN_OVERRIDES = [
    "data.shapes.image_size=64",
    "data.scales=[64]",
    "data.max_size=64",
    "data.shapes.num_val=6",
    "data.max_boxes=6",
    "model.backbone.small_widths=[8,16,16,32]",
    "model.anchors.scales=[16.0,32.0]",
    "model.rpn.channels=16",
    "model.head.channels=32",
    "model.rpn.pre_nms_top_n_train=128",
    "model.rpn.post_nms_top_n_train=32",
    "model.rpn.pre_nms_top_n_test=64",
    "model.rpn.post_nms_top_n_test=16",
    "model.roi.batch_size_per_image=16",
    "model.rpn.batch_size_per_image=64",
    "train.batch_size=2",
    "train.log_every=5",
    "train.warmup_steps=5",
    "train.num_summary_images=2",
]
