"""The one place that maps `ModelConfig` (rfcn_tf/config.py) to keyword arguments.

Components never read the config (STYLE.md, house habit 5); `build_detector` reads every
field, builds the backbone (loading its initial weights) and the `RFCN` model.
"""

from __future__ import annotations

from rfcn_tf.model.backbones import build_backbone
from rfcn_tf.model.detector import RFCN

def _get(model_cfg, name):
    try:
        return getattr(model_cfg, name)
    except AttributeError:
        raise AttributeError(
            f"model config {type(model_cfg).__name__} has no field {name!r} "
            "(build_detector needs every ModelConfig field)"
        ) from None


def build_detector(model_cfg, *, num_classes):
    """Builds the R-FCN detector described by `model_cfg`.

    Args:
        model_cfg: a `rfcn_tf.config.ModelConfig` (or any object with its fields).
        num_classes: C, object classes without background (the dataset's class count).

    Returns:
        An `RFCN` keras.Model with every variable created; the backbone holds the weights
        named by `model_cfg.backbone_weights` (None: random init).

    Raises:
        ValueError: an invalid field value (named in the message); RuntimeError /
        FileNotFoundError from weight loading (see backbones.load_pretrained_weights).
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    backbone = build_backbone(
        _get(model_cfg, "backbone"),
        weights=_get(model_cfg, "backbone_weights"),
        freeze_stages=_get(model_cfg, "freeze_stages"),
        small_widths=list(_get(model_cfg, "small_widths")),
        small_blocks=list(_get(model_cfg, "small_blocks")),
        small_norm=_get(model_cfg, "small_norm"),
    )
    names = (
        "anchor_scales",
        "anchor_ratios",
        "feature_stride",
        "rpn_channels",
        "rpn_pre_nms_top_n_train",
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test",
        "rpn_nms_iou",
        "rpn_min_size",
        "rpn_positive_iou",
        "rpn_negative_iou",
        "rpn_batch_size",
        "rpn_positive_fraction",
        "rpn_allowed_border",
        "head_channels",
        "ps_k",
        "pooling_mode",
        "sampling_ratio",
        "psroi_impl",
        "roi_foreground_iou",
        "roi_background_iou_low",
        "roi_sampling",
        "roi_batch_size",
        "roi_foreground_fraction",
        "ohem_nms_iou",
        "box_weights",
        "score_threshold",
        "nms_iou",
        "max_detections",
        "rpn_loss_weight",
        "rfcn_loss_weight",
        "seed",
    )
    kwargs = {name: _get(model_cfg, name) for name in names}
    for name in ("anchor_scales", "anchor_ratios", "box_weights"):
        kwargs[name] = list(kwargs[name])  # copies: the model never aliases config lists
    return RFCN(backbone=backbone, num_classes=int(num_classes), **kwargs)
