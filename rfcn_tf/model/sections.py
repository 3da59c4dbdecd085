"""The model's config sections: one dataclass per component, and the components' choices.

``model.backbone`` -> :class:`BackboneConfig` (backbones.py), ``model.anchors`` ->
:class:`AnchorsConfig` (anchors.py), ``model.rpn`` -> :class:`RPNConfig` (rpn.py, the RPN
object), ``model.roi`` -> :class:`RoIConfig` (roi_sampling.py: RoI targets, OHEM, balanced
sampling), ``model.head`` -> :class:`HeadConfig` (rfcn_head.py), ``model.postprocess`` ->
:class:`PostprocessConfig` (postprocess.py). Each component takes its section and reads its
fields itself, so a new setting is written twice: the field here and its use in the component
(docs/ARCHITECTURE.md, "Model config"). ``rfcn_tf.config.ModelConfig`` nests them.

This module imports no TensorFlow, so the config tree (``--print-config``, ``--help``) loads
without it. The choice tuples are defined here, once; the components import them.

Units: pixels of the resized input image unless a comment says otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, TypeVar

from rfcn_tf.errors import ConfigError

__all__ = [
    "BACKBONES",
    "NORMS",
    "POOLING_MODES",
    "PSROI_IMPLS",
    "ROI_SAMPLINGS",
    "AnchorsConfig",
    "BackboneConfig",
    "HeadConfig",
    "PostprocessConfig",
    "RPNConfig",
    "RoIConfig",
    "as_section",
]

_Section = TypeVar("_Section")

BACKBONES = ("small", "resnet50", "resnet101")
NORMS = ("batch", "group", "none")  # small backbone normalization
POOLING_MODES = ("avg", "bilinear", "deformable")  # PS-RoI pooling (paper) | PSRoIAlign | DCN
PSROI_IMPLS = ("auto", "custom", "tf")  # see rfcn_tf.ops.psroi_pool
ROI_SAMPLINGS = ("ohem", "balanced")  # R-FCN sec. 2 | Fast R-CNN's 1:3


def as_section(cls: type[_Section], value: Any) -> _Section:
    """A component's private copy of its section, given as the dataclass, its dict (a Keras
    ``get_config``) or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**copy.deepcopy(value))
    if not isinstance(value, cls):
        raise TypeError(f"expected a {cls.__name__} (or its dict), got {type(value).__name__}")
    return copy.deepcopy(value)


def _error(key: str, value, rule: str):
    return ConfigError(f"{key} must be {rule}, got {value!r}")


def _choice(where: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise _error(f"{where}.{name}", value, "one of " + ", ".join(allowed))


def _positive(where: str, name: str, value) -> None:
    if not value > 0:
        raise _error(f"{where}.{name}", value, "> 0")


def _fraction(where: str, name: str, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise _error(f"{where}.{name}", value, "in [0, 1]")


def _positive_list(where: str, name: str, values, length: int | None = None) -> None:
    if (length is not None and len(values) != length) or not values or min(values) <= 0:
        count = f"{length} " if length is not None else ""
        raise _error(f"{where}.{name}", values, f"a list of {count}positive numbers")


@dataclasses.dataclass
class BackboneConfig:
    """The feature extractor (R-FCN sec. 2 "Backbone architecture"; backbones.py)."""

    name: str = "small"  # resnet50 | resnet101 | small
    weights: str | None = None  # None | "imagenet" | path to a local weights file
    # resnet: leading stages not trained (0 none, 1 stem, 2 stem + conv2_x: the paper)
    freeze_stages: int = 2
    # small: stage 2..5 widths
    small_widths: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])
    # small: basic blocks per stage
    small_blocks: list[int] = dataclasses.field(default_factory=lambda: [1, 1, 2, 1])
    small_norm: str = "batch"  # small: batch | group | none
    feature_stride: int = 16  # input pixels per feature cell (every backbone here has 16)
    # Deformable ConvNets sec. 2.1: the 3x3 conv of the LAST n blocks of the head stage
    # (ResNet conv5, 3 blocks: 3 = res5a/b/c as the reference; small: stage 5) becomes a
    # DeformableConv2D (zero-initialized offsets: starts as the plain net); 0 = none
    deformable_blocks: int = 0
    deformable_modulated: bool = False  # DCN v2 (Zhu et al. 2019): the extra mask term

    RESUME_SAFE: ClassVar[tuple[str, ...]] = ("weights",)  # may differ when a run resumes

    def validate(self, where: str = "model.backbone") -> None:
        _choice(where, "name", self.name, BACKBONES)
        _choice(where, "small_norm", self.small_norm, NORMS)
        if not 0 <= self.freeze_stages <= 5:
            raise _error(f"{where}.freeze_stages", self.freeze_stages, "in 0..5")
        _positive_list(where, "small_widths", self.small_widths, 4)
        _positive_list(where, "small_blocks", self.small_blocks, 4)
        _positive(where, "feature_stride", self.feature_stride)
        stage5 = self.small_blocks[3] if self.name == "small" else 3
        if not 0 <= self.deformable_blocks <= stage5:
            raise _error(
                f"{where}.deformable_blocks",
                self.deformable_blocks,
                f"in 0..{stage5} (the {self.name} backbone's last-stage blocks)",
            )


@dataclasses.dataclass
class AnchorsConfig:
    """The RPN's anchor grid (Faster R-CNN sec. 3.1.1; anchors.py)."""

    # sqrt(area), pixels; "auto": fitted to the training split when training starts
    # (rfcn_tf/data/anchor_stats.py), the run's config.yaml records the numbers
    scales: list[float] | str = dataclasses.field(default_factory=lambda: [128.0, 256.0, 512.0])
    # height / width; "auto" as for scales
    ratios: list[float] | str = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])

    RESUME_SAFE: ClassVar[tuple[str, ...]] = ()

    def validate(self, where: str = "model.anchors") -> None:
        for name in ("scales", "ratios"):
            value = getattr(self, name)
            if isinstance(value, str):
                if value != "auto":
                    raise _error(f"{where}.{name}", value, 'a list of positive numbers or "auto"')
            else:
                _positive_list(where, name, value)


@dataclasses.dataclass
class RPNConfig:
    """The region proposal network (Faster R-CNN sec. 3.1; rpn.py): head, proposals, anchor
    labelling and sampling, its loss."""

    channels: int = 512  # 3x3 conv width
    pre_nms_top_n_train: int = 12000  # boxes per image kept before the proposal NMS
    post_nms_top_n_train: int = 2000  # proposals per image after it
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 300  # R-FCN sec. 3: 300 RoIs at test time
    nms_iou: float = 0.7
    min_size: float = 0.0  # proposals smaller than this (pixels) are dropped
    positive_iou: float = 0.7  # anchor labelling, Faster R-CNN sec. 3.1.2
    negative_iou: float = 0.3
    batch_size_per_image: int = 256  # anchors sampled per image
    positive_fraction: float = 0.5
    # None keeps anchors crossing the border; 0 ignores them (sec. 3.3)
    allowed_border: float | None = None
    loss_weight: float = 1.0  # weight of the RPN losses in total_loss

    RESUME_SAFE: ClassVar[tuple[str, ...]] = ("pre_nms_top_n_test", "post_nms_top_n_test")

    def validate(self, where: str = "model.rpn") -> None:
        for name in (
            "channels",
            "pre_nms_top_n_train",
            "post_nms_top_n_train",
            "pre_nms_top_n_test",
            "post_nms_top_n_test",
            "batch_size_per_image",
        ):
            _positive(where, name, getattr(self, name))
        for name in ("nms_iou", "positive_iou", "negative_iou", "positive_fraction"):
            _fraction(where, name, getattr(self, name))
        if self.negative_iou > self.positive_iou:
            raise _error(
                f"{where}.negative_iou",
                self.negative_iou,
                f"<= {where}.positive_iou ({self.positive_iou})",
            )
        if self.min_size < 0:
            raise _error(f"{where}.min_size", self.min_size, ">= 0")
        if self.allowed_border is not None and self.allowed_border < 0:
            raise _error(f"{where}.allowed_border", self.allowed_border, "null or >= 0")
        if self.loss_weight < 0:
            raise _error(f"{where}.loss_weight", self.loss_weight, ">= 0")


@dataclasses.dataclass
class RoIConfig:
    """Which RoIs train the head (R-FCN sec. 2 "Training"; roi_sampling.py): RoI labels and
    OHEM or balanced sampling."""

    foreground_iou: float = 0.5  # RoIs with IoU >= this are foreground
    background_iou_low: float = 0.0  # lowest IoU of a background RoI
    # ohem (R-FCN sec. 2: the hardest RoIs) | balanced (random, foreground_fraction)
    sampling: str = "ohem"
    batch_size_per_image: int = 128  # B in R-FCN's OHEM (128 of 300)
    foreground_fraction: float = 0.25  # balanced sampling only
    # NMS among RoIs before OHEM selection (Shrivastava et al.); None = off
    ohem_nms_iou: float | None = None

    RESUME_SAFE: ClassVar[tuple[str, ...]] = ()

    def validate(self, where: str = "model.roi") -> None:
        _choice(where, "sampling", self.sampling, ROI_SAMPLINGS)
        _fraction(where, "foreground_iou", self.foreground_iou)
        _fraction(where, "background_iou_low", self.background_iou_low)
        if self.background_iou_low > self.foreground_iou:
            raise _error(
                f"{where}.background_iou_low",
                self.background_iou_low,
                f"<= {where}.foreground_iou ({self.foreground_iou})",
            )
        _positive(where, "batch_size_per_image", self.batch_size_per_image)
        _fraction(where, "foreground_fraction", self.foreground_fraction)
        if self.ohem_nms_iou is not None:
            _fraction(where, "ohem_nms_iou", self.ohem_nms_iou)


@dataclasses.dataclass
class HeadConfig:
    """The R-FCN head (R-FCN sec. 2; rfcn_head.py): score maps, PS-RoI pooling, voting, its
    per-RoI loss and box decoding."""

    channels: int = 1024  # 1x1 conv to 1024-d before the score maps (sec. 2.2)
    k: int = 7  # k x k position-sensitive grid
    grid: list[int] | None = None  # [kh, kw]: a rectangular grid instead of k x k (None: [k, k])
    # avg (paper) | bilinear (PSRoIAlign) | deformable (Deformable ConvNets sec. 2.2: bilinear
    # bins shifted by learned per-RoI offsets; square grid, sampling_ratio >= 1)
    pooling_mode: str = "avg"
    # bilinear / deformable: samples per bin side; <= 0 (bilinear only): adaptive,
    # ceil(RoI size / bins)
    sampling_ratio: int = 2
    trans_std: float = 0.1  # deformable: a bin moves by offset * trans_std * RoI size (gamma)
    # deformable: false = one offset field for all classes (class-agnostic); true = one per
    # class incl. background (the reference code's class maps); the box maps' offsets are
    # always class-agnostic
    deformable_class_offsets: bool = False
    psroi_impl: str = "auto"  # auto | custom | tf
    # true: 4k^2 box maps shared by all classes (the paper); false: 4k^2 C, one box per class
    class_agnostic_boxes: bool = True
    # 1 / (0.1, 0.1, 0.2, 0.2)
    box_weights: list[float] = dataclasses.field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    loss_weight: float = 1.0  # weight of the R-FCN losses in total_loss

    RESUME_SAFE: ClassVar[tuple[str, ...]] = ("psroi_impl",)

    @property
    def output_size(self) -> tuple[int, int]:
        """(kh, kw), the PS grid: bins down and across each RoI."""
        return (int(self.grid[0]), int(self.grid[1])) if self.grid is not None else (self.k, self.k)

    def validate(self, where: str = "model.head") -> None:
        _positive(where, "channels", self.channels)
        if self.k < 1:
            raise _error(f"{where}.k", self.k, ">= 1")
        if self.grid is not None:
            _positive_list(where, "grid", self.grid, 2)
        _choice(where, "pooling_mode", self.pooling_mode, POOLING_MODES)
        _choice(where, "psroi_impl", self.psroi_impl, PSROI_IMPLS)
        if self.pooling_mode == "deformable":
            kh, kw = self.output_size
            if kh != kw:
                raise _error(
                    f"{where}.grid",
                    self.grid,
                    "null or square with pooling_mode deformable (its op takes k x k grids)",
                )
            if self.sampling_ratio < 1:
                raise _error(
                    f"{where}.sampling_ratio",
                    self.sampling_ratio,
                    ">= 1 with pooling_mode deformable (no adaptive sampling)",
                )
        if not self.trans_std >= 0:
            raise _error(f"{where}.trans_std", self.trans_std, ">= 0")
        _positive_list(where, "box_weights", self.box_weights, 4)
        if self.loss_weight < 0:
            raise _error(f"{where}.loss_weight", self.loss_weight, ">= 0")


@dataclasses.dataclass
class PostprocessConfig:
    """Detections from scored RoIs (R-FCN sec. 3; postprocess.py)."""

    score_threshold: float = 0.05  # detections scored at or below are dropped
    nms_iou: float = 0.3  # per-class NMS IoU
    max_detections: int = 100  # per image

    RESUME_SAFE: ClassVar[tuple[str, ...]] = ("score_threshold", "nms_iou", "max_detections")

    def validate(self, where: str = "model.postprocess") -> None:
        _fraction(where, "score_threshold", self.score_threshold)
        _fraction(where, "nms_iou", self.nms_iou)
        _positive(where, "max_detections", self.max_detections)
