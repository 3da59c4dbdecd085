"""The one place that maps `ModelConfig` (rfcn_tf/config.py) to the built detector.

Each component takes its own section of the model config (rfcn_tf/model/sections.py):
`build_detector` builds the backbone from `model.backbone` (loading its initial weights) and
hands `model.anchors`, `model.rpn`, `model.roi`, `model.head` and `model.postprocess` to
`RFCN`, which gives each to the component it configures. No field is listed here, so a new
setting is written only in its section and in the component that reads it.
"""

from __future__ import annotations

from rfcn_tf.config import ConfigError
from rfcn_tf.model.backbones import build_backbone
from rfcn_tf.model.detector import RFCN

__all__ = ["build_detector"]


def build_detector(model_cfg, *, num_classes):
    """Builds the R-FCN detector described by `model_cfg`.

    Args:
        model_cfg: a `rfcn_tf.config.ModelConfig`.
        num_classes: C, object classes without background (the dataset's class count).

    Returns:
        An `RFCN` keras.Model with every variable created; the backbone holds the weights
        named by `model_cfg.backbone.weights` (None: random init).

    Raises:
        ValueError: an invalid field value (named in the message); RuntimeError /
        FileNotFoundError from weight loading (see backbones.load_pretrained_weights).
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    for field in ("scales", "ratios"):
        if isinstance(getattr(model_cfg.anchors, field), str):
            # "auto" is fitted to the training split when training starts (data/anchor_stats.py)
            # and the run folder's config.yaml records the numbers: read that one.
            raise ConfigError(
                f"model.anchors.{field} is {getattr(model_cfg.anchors, field)!r}: it is resolved "
                "from the training split when training starts; build the model from the run "
                "folder's config.yaml (which holds the fitted numbers) or give numbers"
            )
    b = model_cfg.backbone
    backbone = build_backbone(
        b.name,
        weights=b.weights,
        freeze_stages=b.freeze_stages,
        small_widths=list(b.small_widths),
        small_blocks=list(b.small_blocks),
        small_norm=b.small_norm,
        deformable_blocks=b.deformable_blocks,
        deformable_modulated=b.deformable_modulated,
        deformable_impl=model_cfg.head.psroi_impl,  # exports force "tf": stock ops only
    )
    if backbone.feature_stride != b.feature_stride:
        raise ValueError(
            f"model.backbone.feature_stride={b.feature_stride!r} differs from the "
            f"{b.name} backbone's stride {backbone.feature_stride!r}"
        )
    return RFCN(
        backbone=backbone,
        num_classes=int(num_classes),
        anchors=model_cfg.anchors,
        rpn=model_cfg.rpn,
        roi=model_cfg.roi,
        head=model_cfg.head,
        postprocess=model_cfg.postprocess,
        seed=model_cfg.seed,
    )
