"""The configuration tree: typed dataclasses, YAML presets and dotted overrides.

One tree, ``Config(model, data, train, eval, export)``. Presets live in ``configs/<name>.yaml``
at the repository root (and are installed with the package as ``rfcn_tf/configs``); a YAML file
only lists the values that differ from the defaults below. Command lines override single values
with ``--set train.lr=0.01`` (the value is parsed as YAML, so ``[600, 800]``, ``null`` and
``true`` work).

Components never read this tree: builders (``rfcn_tf.model.builder.build_detector``,
``rfcn_tf.data.pipeline.build_dataset``) map it to keyword arguments.

Units: pixels of the resized input image unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

DEFAULT_CONFIG = "shapes_tiny"


class ConfigError(ValueError):
    """A configuration file or override that does not fit the tree (unknown key, wrong type)."""


@dataclasses.dataclass
class ShapesConfig:
    """The procedural ``shapes`` dataset (generated inside tf.data, no files)."""

    image_size: int = 256  # side of the square synthetic images, pixels
    num_val: int = 200  # images in the fixed validation split
    min_objects: int = 1  # objects per image, inclusive range
    max_objects: int = 4
    min_size: float = 0.12  # smallest object side, as a fraction of image_size
    max_size: float = 0.5  # largest object side, as a fraction of image_size
    max_overlap_iou: float = 0.3  # objects overlapping more than this are redrawn
    classes: list[str] = dataclasses.field(default_factory=lambda: ["circle", "square", "triangle"])
    seed: int = 0  # train stream and validation split derive their streams from it


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are prepared (DESIGN.md: normalized yxyx)."""

    source: str = "shapes"  # shapes | voc | coco_json | tfds | tfrecord
    tfds_name: str = "voc/2007"  # tfds: dataset name; "voc/2007+voc/2012" concatenates
    eval_tfds_name: Optional[str] = None  # tfds: dataset of every split but train_split (None: tfds_name)
    data_dir: Optional[str] = None  # tfds: data_dir
    manual_dir: Optional[str] = None  # tfds: manual_dir (download_config)
    voc_root: Optional[str] = None  # voc: folder with Annotations/, JPEGImages/, ImageSets/
    coco_annotations: Optional[str] = None  # coco_json: instances_*.json
    coco_images: Optional[str] = None  # coco_json: image folder
    tfrecord_pattern: Optional[str] = None  # tfrecord: glob of the shard files, {split} replaced (e.g. data/bccd_tfrecord/{split}-*.tfrecord)
    label_map: Optional[str] = None  # tfrecord: the OD API label_map.pbtxt (None: label_map.pbtxt beside the shards)
    train_split: str = "train"
    val_split: str = "validation"
    class_names: Optional[list[str]] = None  # None: from the source (discovered or TFDS info)
    scales: list[int] = dataclasses.field(default_factory=lambda: [600])  # shorter side(s); several = multi-scale training
    max_size: int = 1000  # cap on the longer side after resizing
    random_flip: bool = True  # horizontal flip in training
    photometric: bool = False  # brightness/contrast/saturation/hue jitter in training
    max_boxes: int = 100  # ground truth padded (with -1 and a mask) to this many boxes
    skip_corrupt: bool = False  # True: skip unreadable images with one counted warning
    drop_empty: bool = False  # True: drop images without boxes in training
    use_difficult: bool = False  # True: train on VOC "difficult" boxes too
    cache: bool = False  # cache decoded examples in memory
    deterministic: bool = False  # deterministic element order (tests)
    shuffle_buffer: int = 256
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    seed: int = 0
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)


@dataclasses.dataclass
class ModelConfig:
    """R-FCN architecture (Dai et al. 2016) and its RPN (Faster R-CNN, Ren et al. 2015)."""

    backbone: str = "small"  # resnet50 | resnet101 | small
    backbone_weights: Optional[str] = None  # None | "imagenet" | path to a local weights file
    freeze_stages: int = 2  # resnet: leading stages not trained (0 none, 1 stem, 2 stem + conv2_x: the paper's setting)
    small_widths: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])  # small backbone stage widths
    small_blocks: list[int] = dataclasses.field(default_factory=lambda: [1, 1, 2, 1])  # small backbone: basic blocks per stage
    small_norm: str = "batch"  # small backbone normalization: batch | group | none
    anchor_scales: list[float] = dataclasses.field(default_factory=lambda: [128.0, 256.0, 512.0])  # sqrt(area), pixels
    anchor_ratios: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width
    feature_stride: int = 16
    rpn_channels: int = 512  # RPN 3x3 conv width
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300  # R-FCN sec. 3: 300 RoIs at test time
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 0.0  # proposals smaller than this (pixels) are dropped
    rpn_positive_iou: float = 0.7  # Faster R-CNN sec. 3.1.2
    rpn_negative_iou: float = 0.3
    rpn_batch_size: int = 256  # anchors sampled per image
    rpn_positive_fraction: float = 0.5
    rpn_allowed_border: Optional[float] = None  # None keeps anchors crossing the border; 0 ignores them (Faster R-CNN sec. 3.3)
    head_channels: int = 1024  # R-FCN sec. 2: 1x1 conv to 1024-d before the score maps
    ps_k: int = 7  # k x k position-sensitive grid
    pooling_mode: str = "avg"  # avg (paper) | bilinear (PSRoIAlign)
    sampling_ratio: int = 2  # bilinear: samples per bin side
    psroi_impl: str = "auto"  # auto | custom | tf
    roi_foreground_iou: float = 0.5  # R-FCN sec. 2 Training
    roi_background_iou_low: float = 0.0
    roi_sampling: str = "ohem"  # ohem (R-FCN sec. 2) | balanced (1:3 fg:bg)
    roi_batch_size: int = 128  # B in R-FCN's OHEM (128 of 300)
    roi_foreground_fraction: float = 0.25  # balanced sampling only
    ohem_nms_iou: Optional[float] = None  # NMS among RoIs before OHEM selection (Shrivastava et al.); None = off
    box_weights: list[float] = dataclasses.field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])  # 1 / (0.1, 0.1, 0.2, 0.2)
    score_threshold: float = 0.05  # detections below are dropped
    nms_iou: float = 0.3  # per-class NMS at inference (R-FCN sec. 3)
    max_detections: int = 100  # per image
    rpn_loss_weight: float = 1.0
    rfcn_loss_weight: float = 1.0
    seed: Optional[int] = None  # None: fresh anchor/RoI sampling keys every step; an int repeats them (tests)


@dataclasses.dataclass
class TrainConfig:
    """The training loop (R-FCN sec. 3: SGD, momentum 0.9, weight decay 0.0005)."""

    steps: int = 2000  # optimizer steps in all (per stage for the alternating scheme: see stage_steps)
    batch_size: int = 2  # global batch (images per step over all replicas)
    lr: float = 0.01  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0005  # not applied to BatchNorm and biases
    schedule: str = "cosine"  # cosine | step
    lr_steps: list[int] = dataclasses.field(default_factory=list)  # step schedule: boundaries
    lr_decay: float = 0.1  # step schedule: factor at each boundary
    warmup_steps: int = 100
    warmup_factor: float = 0.001  # lr at step 0 = lr * warmup_factor
    clip_norm: Optional[float] = 10.0  # global-norm gradient clipping; None = off
    mixed_precision: bool = False  # mixed_float16 with loss scaling (GPU)
    scheme: str = "joint"  # joint | alternating (R-FCN sec. 3: 4-step)
    stage_steps: list[int] = dataclasses.field(default_factory=list)  # alternating: steps of each of the 4 stages
    strategy: str = "default"  # default | mirrored | multi_worker
    checkpoint_every: int = 500  # steps
    keep_checkpoints: int = 3
    log_every: int = 20  # steps
    work_dir: str = "runs/shapes_tiny"
    init_checkpoint: Optional[str] = None  # start from these weights (fine-tuning)
    seed: int = 0
    evaluate_at_end: bool = True
    export_at_end: bool = True
    num_summary_images: int = 4  # validation images with boxes in TensorBoard


@dataclasses.dataclass
class EvalConfig:
    """Evaluation (COCO metrics via pycocotools; VOC07 11-point and VOC2010+ AP)."""

    split: Optional[str] = None  # None: data.val_split
    batch_size: int = 1
    max_images: Optional[int] = None
    score_threshold: Optional[float] = None  # None: model.score_threshold
    multiscale: bool = False  # R-FCN sec. 4.2 (COCO): several test scales merged by NMS
    multiscale_sizes: list[int] = dataclasses.field(default_factory=lambda: [200, 400, 600, 800, 1000])


@dataclasses.dataclass
class ExportConfig:
    """SavedModel export in TF Serving's layout export/<model_name>/<version>/."""

    model_name: str = "rfcn"
    out_dir: str = "export"
    version: Optional[int] = None  # None: the next free version number


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Locating presets


def repository_root() -> Path:
    """The checkout's top folder (where configs/ and README.md are)."""
    return Path(__file__).resolve().parent.parent


def config_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``: the checkout's configs/, then the installed copy."""
    return [repository_root() / "configs", Path(__file__).resolve().parent / "configs"]


def available_presets() -> list[str]:
    names = set()
    for folder in config_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``bccd``) or a path to a YAML file -> the file's path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {name_or_path}")
        return candidate
    for folder in config_dirs():
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    presets = available_presets()
    near = difflib.get_close_matches(name_or_path, presets, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise ConfigError(f"unknown config '{name_or_path}' (presets: {', '.join(presets)}){hint}")


# --------------------------------------------------------------------------------------------
# Merging values into the tree


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return near[0] if near else ""


def _unknown_key(path: str, key: str, node: Any) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(node)]
    full = f"{path}.{key}" if path else key
    near = _nearest(key, valid)
    near_full = f"{path}.{near}" if path else near
    return ConfigError(f"unknown config key '{full}'; did you mean '{near_full}'? "
                       f"(valid keys here: {', '.join(valid)})")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks ``value`` against the field's type, converting int -> float where that is lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if value is None:
        raise ConfigError(f"{where} may not be null")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_type,) = args
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _merge(node: Any, values: dict[str, Any], path: str = "") -> None:
    """Writes ``values`` (nested dicts) into the dataclass ``node`` in place, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{path or 'config'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(node))
    names = {f.name for f in dataclasses.fields(node)}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(path, key, node)
        where = f"{path}.{key}" if path else key
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, where)
        else:
            setattr(node, key, _coerce(value, hints[key], where))


def apply_override(config: Config, override: str) -> None:
    """Applies one ``a.b.c=value`` override (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override must look like key=value, got '{override}'")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{override}': the value is not valid YAML ({exc})") from exc
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    _merge(config, nested)


def validate(config: Config) -> None:
    """Cross-field checks that single types cannot express."""
    choices = {
        "data.source": (config.data.source, ("shapes", "voc", "coco_json", "tfds", "tfrecord")),
        "model.backbone": (config.model.backbone, ("small", "resnet50", "resnet101")),
        "model.pooling_mode": (config.model.pooling_mode, ("avg", "bilinear")),
        "model.small_norm": (config.model.small_norm, ("batch", "group", "none")),
        "model.psroi_impl": (config.model.psroi_impl, ("auto", "custom", "tf")),
        "model.roi_sampling": (config.model.roi_sampling, ("ohem", "balanced")),
        "train.schedule": (config.train.schedule, ("cosine", "step")),
        "train.scheme": (config.train.scheme, ("joint", "alternating")),
        "train.strategy": (config.train.strategy, ("default", "mirrored", "multi_worker")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    if not config.data.scales:
        raise ConfigError("data.scales must list at least one shorter-side size")
    if config.model.ps_k < 1:
        raise ConfigError(f"model.ps_k must be >= 1, got {config.model.ps_k}")
    if len(config.model.box_weights) != 4:
        raise ConfigError(f"model.box_weights needs 4 values (dy, dx, dh, dw), got {config.model.box_weights}")
    if config.train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {config.train.batch_size}")
    if config.train.scheme == "alternating" and config.train.stage_steps and len(config.train.stage_steps) != 4:
        raise ConfigError(f"train.stage_steps needs 4 values for the alternating scheme, got {config.train.stage_steps}")


def load_config(name_or_path: Optional[str] = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Builds the tree: defaults <- the preset/YAML file <- ``overrides`` (``a.b=value`` strings).

    Args:
      name_or_path: a preset name from configs/ (``shapes_tiny``, ``bccd``, ...) or a YAML path;
        None loads ``DEFAULT_CONFIG``.
      overrides: dotted ``key=value`` strings, applied in order.

    Raises:
      ConfigError: unknown preset or key (with the nearest valid one), wrong value type.
    """
    config = Config()
    path = resolve_config_path(name_or_path or DEFAULT_CONFIG)
    with open(path, encoding="utf-8") as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        _merge(config, values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    """A tree from nested dicts (e.g. a saved ``config.yaml`` of a run), checked like a file."""
    config = Config()
    _merge(config, values)
    validate(config)
    return config
