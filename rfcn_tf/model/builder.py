"""The one place that maps `ModelConfig` (rfcn_tf/config.py) to keyword arguments.

Components never read the config (STYLE.md, house habit 5); `build_detector` reads every
field, builds the backbone (loading its initial weights) and the `RFCN` model.
"""

from __future__ import annotations

from rfcn_tf.model.backbones import build_backbone
from rfcn_tf.model.detector import RFCN


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
    b, a, rpn, roi, head, post = (model_cfg.backbone, model_cfg.anchors, model_cfg.rpn,
                                  model_cfg.roi, model_cfg.head, model_cfg.postprocess)
    backbone = build_backbone(
        b.name,
        weights=b.weights,
        freeze_stages=b.freeze_stages,
        small_widths=list(b.small_widths),
        small_blocks=list(b.small_blocks),
        small_norm=b.small_norm,
    )
    kwargs = dict(
        anchor_scales=list(a.scales), anchor_ratios=list(a.ratios),
        feature_stride=b.feature_stride, rpn_channels=rpn.channels,
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_test, rpn_nms_iou=rpn.nms_iou,
        rpn_min_size=rpn.min_size, rpn_positive_iou=rpn.positive_iou,
        rpn_negative_iou=rpn.negative_iou, rpn_batch_size=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction, rpn_allowed_border=rpn.allowed_border,
        head_channels=head.channels, ps_k=head.k, pooling_mode=head.pooling_mode,
        sampling_ratio=head.sampling_ratio, psroi_impl=head.psroi_impl,
        roi_foreground_iou=roi.foreground_iou, roi_background_iou_low=roi.background_iou_low,
        roi_sampling=roi.sampling, roi_batch_size=roi.batch_size_per_image,
        roi_foreground_fraction=roi.foreground_fraction, ohem_nms_iou=roi.ohem_nms_iou,
        box_weights=list(head.box_weights), score_threshold=post.score_threshold,
        nms_iou=post.nms_iou, max_detections=post.max_detections,
        rpn_loss_weight=rpn.loss_weight, rfcn_loss_weight=head.loss_weight, seed=model_cfg.seed,
    )
    return RFCN(backbone=backbone, num_classes=int(num_classes), **kwargs)
