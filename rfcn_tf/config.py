"""The configuration tree: typed dataclasses, YAML presets and dotted overrides.

One tree, ``Config(model, data, train, eval, export)``. Presets live in ``configs/<name>.yaml``
at the repository root (and are installed with the package as ``rfcn_tf/configs``); a YAML file
only lists the values that differ from the defaults below. Command lines override single values
with ``--set train.lr=0.01`` (the value is parsed as YAML, so ``[600, 800]``, ``null``,
``true`` and ``1e-3`` work: numbers in exponent form are floats here, where plain YAML 1.1 reads
them as strings).

The model section nests one section per component (``model.backbone``, ``model.anchors``,
``model.rpn``, ``model.roi``, ``model.head``, ``model.postprocess``), each a dataclass of
``rfcn_tf/model/sections.py`` that its component reads (``rfcn_tf.model.builder`` hands each
component its section). The flat keys of earlier versions (``model.rpn_nms_iou``) are refused
with their new place (``model.rpn.nms_iou``); a run folder saved with them still loads through
``load_config(..., old_layout="migrate")`` (one ConfigWarning).

Validation: ``validate(config)`` calls ``validate(where)`` of every top-level section that has
one (each section checks its own ranges and choices, raising ConfigError naming the key and
value), then the cross-field checks there. A section gains checks by defining that method.

Units: pixels of the resized input image unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from rfcn_tf.errors import ConfigError  # the package's (an RfcnError); importable from here too
from rfcn_tf.model.sections import (
    AnchorsConfig,
    BackboneConfig,
    HeadConfig,
    PostprocessConfig,
    RoIConfig,
    RPNConfig,
)

DEFAULT_CONFIG = "shapes_tiny"


class ConfigWarning(UserWarning):
    """A configuration that still works but should be rewritten (the old flat model keys)."""


class _Loader(yaml.SafeLoader):
    """YAML with ``1e-3`` / ``5E+2`` read as floats (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: Any) -> Any:
    """``yaml.safe_load`` that also reads exponent-form floats (a string or a file object)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def _require(where: str, name: str, value: Any, ok: bool, rule: str) -> None:
    """Raises ConfigError("<where>.<name> must be <rule>, got <value>") unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}.{name} must be {rule}, got {value!r}")


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _sizes(where: str, name: str, values: list[int]) -> None:
    _require(
        where,
        name,
        values,
        bool(values) and all(v >= 1 for v in values),
        "a non-empty list of sizes >= 1 (pixels)",
    )


def _names(where: str, name: str, values: list[str]) -> None:
    _require(
        where,
        name,
        values,
        bool(values)
        and all(isinstance(v, str) and v.strip() for v in values)
        and len(set(values)) == len(values),
        "a non-empty list of distinct names",
    )


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

    def validate(self, where: str = "data.shapes") -> None:
        """Ranges of the generator's settings (ConfigError naming the key and value)."""
        _require(where, "image_size", self.image_size, self.image_size >= 8, ">= 8 pixels")
        _require(where, "num_val", self.num_val, self.num_val >= 1, ">= 1")
        _require(where, "min_objects", self.min_objects, self.min_objects >= 0, ">= 0")
        _require(
            where,
            "max_objects",
            self.max_objects,
            self.max_objects >= max(self.min_objects, 1),
            f">= 1 and >= min_objects ({self.min_objects})",
        )
        _require(
            where,
            "min_size",
            self.min_size,
            0.0 < self.min_size <= 1.0,
            "in (0, 1] (a fraction of image_size)",
        )
        _require(
            where,
            "max_size",
            self.max_size,
            self.min_size <= self.max_size <= 1.0,
            f"in [min_size ({self.min_size}), 1]",
        )
        _require(
            where,
            "max_overlap_iou",
            self.max_overlap_iou,
            0.0 <= self.max_overlap_iou <= 1.0,
            "in [0, 1]",
        )
        _names(where, "classes", self.classes)


# Sources whose training split can be cut to its first data.max_train_images ids.
FIRST_N_SOURCES = ("voc", "coco_json")


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are prepared (docs/ARCHITECTURE.md: normalized yxyx)."""

    source: str = "shapes"  # shapes | voc | coco_json | tfds | tfrecord
    tfds_name: str = "voc/2007"  # tfds: dataset name; "voc/2007+voc/2012" concatenates
    eval_tfds_name: str | None = (
        None  # tfds: dataset of every split but train_split (None: tfds_name)
    )
    data_dir: str | None = None  # tfds: data_dir
    manual_dir: str | None = None  # tfds: manual_dir (download_config)
    voc_root: str | None = None  # voc: folder with Annotations/, JPEGImages/, ImageSets/
    coco_annotations: str | None = None  # coco_json: instances_*.json
    coco_images: str | None = None  # coco_json: image folder
    tfrecord_pattern: str | None = (
        None  # tfrecord: glob of the shard files, {split} replaced (e.g. data/bccd_tfrecord/{split}-*.tfrecord)
    )
    label_map: str | None = (
        None  # tfrecord: the OD API label_map.pbtxt (None: label_map.pbtxt beside the shards)
    )
    service: str | None = (
        None  # tf.data service dispatcher "grpc://host:port": training preprocessing runs on its workers (None: in this process)
    )
    aspect_grouping: bool | None = (
        None  # batch training images of one height/width group together (None: on when the per-replica batch > 1)
    )
    aspect_ratio_boundaries: list[float] = dataclasses.field(
        default_factory=lambda: [1.0]
    )  # height/width group edges: [1.0] = landscape | portrait
    train_split: str = "train"
    val_split: str = "validation"
    # voc/coco_json: train on the first N ids of train_split, sorted by id (None: all of it)
    max_train_images: int | None = None
    class_names: list[str] | None = None  # None: from the source (discovered or TFDS info)
    scales: list[int] = dataclasses.field(
        default_factory=lambda: [600]
    )  # shorter side(s); several = multi-scale training
    max_size: int = 1000  # cap on the longer side after resizing
    random_flip: bool = True  # horizontal flip in training
    photometric: bool = False  # brightness/contrast/saturation/hue jitter in training
    scale_jitter: list[float] | None = (
        None  # training: [low, high] log-uniform factor on the chosen shorter side, e.g. [0.8, 1.25]
    )
    random_crop: bool = False  # training: SSD-style IoU-constrained crop; boxes keeping < crop_min_visible of their area are dropped
    crop_min_visible: float = (
        0.5  # random_crop: share of a box's area that must stay inside the crop
    )
    vertical_flip: bool = False  # training: random up-down flip (aerial, microscopy)
    rot90: bool = False  # training: random 0/90/180/270-degree rotation (aerial, microscopy)
    max_boxes: int = 100  # ground truth padded (with -1 and a mask) to at least this many rows; images with more boxes keep them all
    skip_corrupt: bool = False  # True: skip unreadable images with one counted warning
    drop_empty: bool = False  # True: drop images without boxes in training
    use_difficult: bool = False  # True: train on VOC "difficult" boxes too
    cache: bool = False  # cache decoded examples in memory
    deterministic: bool = False  # deterministic TRAINING order (evaluation always is)
    shuffle_buffer: int = 256
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    seed: int = 0
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)

    def validate(self, where: str = "data") -> None:
        """Ranges of the data settings (ConfigError naming the key and value)."""
        for name in ("train_split", "val_split"):
            _require(where, name, getattr(self, name), bool(getattr(self, name)), "a split name")
        if self.max_train_images is not None:
            _require(
                where,
                "max_train_images",
                self.max_train_images,
                self.max_train_images >= 1,
                ">= 1 or null (the whole split)",
            )
            _require(
                where,
                "max_train_images",
                self.max_train_images,
                self.source in FIRST_N_SOURCES,
                f"null for data.source={self.source!r} (the first N ids of a split exist "
                f"for the folder sources {', '.join(FIRST_N_SOURCES)} only)",
            )
        if self.class_names is not None:
            _names(where, "class_names", self.class_names)
        _sizes(where, "scales", self.scales)
        _require(where, "max_size", self.max_size, self.max_size >= 1, ">= 1 pixels")
        _require(where, "max_boxes", self.max_boxes, self.max_boxes >= 1, ">= 1")
        _require(where, "shuffle_buffer", self.shuffle_buffer, self.shuffle_buffer >= 1, ">= 1")
        _require(
            where,
            "num_parallel_calls",
            self.num_parallel_calls,
            self.num_parallel_calls == -1 or self.num_parallel_calls >= 1,
            "-1 (autotune) or >= 1",
        )
        _require(
            where,
            "aspect_ratio_boundaries",
            self.aspect_ratio_boundaries,
            all(_finite(b) and b > 0 for b in self.aspect_ratio_boundaries)
            and list(self.aspect_ratio_boundaries) == sorted(set(self.aspect_ratio_boundaries)),
            "increasing height/width ratios > 0",
        )
        self.shapes.validate(f"{where}.shapes")


@dataclasses.dataclass
class ModelConfig:
    """R-FCN (Dai et al. 2016) and its RPN (Faster R-CNN, Ren et al. 2015): one section per
    component, each defined next to it in ``rfcn_tf/model/sections.py``."""

    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    anchors: AnchorsConfig = dataclasses.field(default_factory=AnchorsConfig)
    rpn: RPNConfig = dataclasses.field(default_factory=RPNConfig)
    roi: RoIConfig = dataclasses.field(default_factory=RoIConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)
    # None: fresh anchor/RoI sampling keys every step; an int repeats them (tests)
    seed: int | None = None

    def validate(self, where: str = "model") -> None:
        """Every section's ``validate`` (ranges and choices)."""
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            if dataclasses.is_dataclass(section):
                section.validate(f"{where}.{field.name}")


@dataclasses.dataclass
class TrainConfig:
    """The training loop (R-FCN sec. 3: SGD, momentum 0.9, weight decay 0.0005)."""

    steps: int = (
        2000  # optimizer steps in all (per stage for the alternating scheme: see stage_steps)
    )
    batch_size: int = 2  # global batch (images per step over all replicas)
    lr: float = 0.01  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0005  # not applied to BatchNorm and biases
    schedule: str = "cosine"  # cosine | step
    lr_steps: list[int] = dataclasses.field(default_factory=list)  # step schedule: boundaries
    lr_decay: float = 0.1  # step schedule: factor at each boundary
    warmup_steps: int = 100
    warmup_factor: float = 0.001  # lr at step 0 = lr * warmup_factor
    clip_norm: float | None = 10.0  # global-norm gradient clipping; None = off
    mixed_precision: bool = False  # mixed_float16 with loss scaling (GPU)
    scheme: str = "joint"  # joint | alternating (R-FCN sec. 3: 4-step)
    stage_steps: list[int] = dataclasses.field(
        default_factory=list
    )  # alternating: steps of each of the 4 stages
    strategy: str = "default"  # default | mirrored | multi_worker
    checkpoint_every: int = 500  # steps
    keep_checkpoints: int = 3
    log_every: int = 20  # steps
    work_dir: str = "runs/shapes_tiny"
    init_checkpoint: str | None = None  # start from these weights (fine-tuning)
    seed: int = 0
    evaluate_at_end: bool = True
    export_at_end: bool = True
    num_summary_images: int = 4  # validation images with boxes in TensorBoard
    # Schedules in epochs (rfcn_tf/engine/epochs.py): each replaces its step field when set.
    epochs: float | None = None  # steps = ceil(epochs * training images / batch_size)
    warmup_epochs: float | None = None  # -> warmup_steps
    lr_epochs: list[float] = dataclasses.field(default_factory=list)  # -> lr_steps
    # Validation during training (rfcn_tf/engine/validation.py), on data.val_split, chief only.
    eval_every: int = 0  # steps between validations (and after the last step); 0 = off
    eval_every_epochs: float | None = None  # -> eval_every
    best_metric: str = "coco/AP50"  # picks checkpoints/best: coco/AP50|AP, voc07|voc2010/mAP
    early_stop_patience: int = 0  # stop after this many validations without gain; 0 = off
    ema_decay: float | None = None  # weight EMA (e.g. 0.9998) for validation/best/export
    sync_batchnorm: bool = False  # BatchNorm statistics all-reduced over the replicas
    data_resume: str = "auto"  # auto | iterator | skip | none (rfcn_tf/engine/data_resume.py)

    def validate(self, where: str = "train") -> None:
        """Ranges of the training settings (ConfigError naming the key and value)."""
        _require(where, "steps", self.steps, self.steps >= 1, ">= 1")
        _require(where, "batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        _require(where, "lr", self.lr, _finite(self.lr) and self.lr > 0, "a number > 0")
        _require(where, "momentum", self.momentum, 0.0 <= self.momentum < 1.0, "in [0, 1)")
        _require(
            where,
            "weight_decay",
            self.weight_decay,
            _finite(self.weight_decay) and self.weight_decay >= 0,
            ">= 0",
        )
        _require(
            where,
            "lr_steps",
            self.lr_steps,
            all(s >= 1 for s in self.lr_steps) and self.lr_steps == sorted(set(self.lr_steps)),
            "increasing step numbers >= 1",
        )
        _require(where, "lr_decay", self.lr_decay, 0.0 < self.lr_decay <= 1.0, "in (0, 1]")
        _require(where, "warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0")
        _require(
            where, "warmup_factor", self.warmup_factor, 0.0 < self.warmup_factor <= 1.0, "in (0, 1]"
        )
        if self.clip_norm is not None:
            _require(
                where,
                "clip_norm",
                self.clip_norm,
                _finite(self.clip_norm) and self.clip_norm > 0,
                "> 0 or null (off)",
            )
        _require(
            where,
            "stage_steps",
            self.stage_steps,
            all(s >= 1 for s in self.stage_steps),
            "steps >= 1 per stage",
        )
        _require(
            where,
            "checkpoint_every",
            self.checkpoint_every,
            self.checkpoint_every >= 0,
            ">= 0 (0: only at the end)",
        )
        _require(
            where, "keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 1, ">= 1"
        )
        _require(where, "log_every", self.log_every, self.log_every >= 1, ">= 1")
        _require(where, "work_dir", self.work_dir, bool(self.work_dir), "a folder")
        _require(
            where,
            "num_summary_images",
            self.num_summary_images,
            self.num_summary_images >= 0,
            ">= 0",
        )
        for name in ("epochs", "eval_every_epochs"):
            value = getattr(self, name)
            if value is not None:
                _require(where, name, value, _finite(value) and value > 0, "> 0 or null")
        if self.warmup_epochs is not None:
            _require(
                where,
                "warmup_epochs",
                self.warmup_epochs,
                _finite(self.warmup_epochs) and self.warmup_epochs >= 0,
                ">= 0 or null",
            )
        _require(
            where,
            "lr_epochs",
            self.lr_epochs,
            all(_finite(e) and e > 0 for e in self.lr_epochs)
            and list(self.lr_epochs) == sorted(set(self.lr_epochs)),
            "increasing epoch numbers > 0",
        )
        _require(where, "eval_every", self.eval_every, self.eval_every >= 0, ">= 0 (0: off)")
        _require(
            where,
            "early_stop_patience",
            self.early_stop_patience,
            self.early_stop_patience >= 0,
            ">= 0 (0: off)",
        )
        if self.ema_decay is not None:
            _require(
                where,
                "ema_decay",
                self.ema_decay,
                0.0 < self.ema_decay < 1.0,
                "in (0, 1) or null (off)",
            )
        _require(
            where,
            "data_resume",
            self.data_resume,
            self.data_resume in ("auto", "iterator", "skip", "none"),
            "one of auto, iterator, skip, none",
        )
        _require(
            where,
            "best_metric",
            self.best_metric,
            self.best_metric.partition("/")[0] in ("coco", "voc07", "voc2010")
            and bool(self.best_metric.partition("/")[2]),
            "section/name: coco/AP50, coco/AP, voc07/mAP or voc2010/mAP",
        )


@dataclasses.dataclass
class EvalConfig:
    """Evaluation (COCO metrics via pycocotools; VOC07 11-point and VOC2010+ AP)."""

    split: str | None = None  # None: data.val_split
    batch_size: int = 1
    max_images: int | None = None
    score_threshold: float | None = None  # None: model.postprocess.score_threshold
    multiscale: bool = False  # R-FCN sec. 4.2 (COCO): several test scales merged by NMS
    multiscale_sizes: list[int] = dataclasses.field(
        default_factory=lambda: [200, 400, 600, 800, 1000]
    )

    def validate(self, where: str = "eval") -> None:
        """Ranges of the evaluation settings (ConfigError naming the key and value)."""
        _require(where, "batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        if self.max_images is not None:
            _require(
                where, "max_images", self.max_images, self.max_images >= 1, ">= 1 or null (all)"
            )
        if self.score_threshold is not None:
            _require(
                where,
                "score_threshold",
                self.score_threshold,
                0.0 <= self.score_threshold <= 1.0,
                "in [0, 1] or null",
            )
        _sizes(where, "multiscale_sizes", self.multiscale_sizes)


@dataclasses.dataclass
class ExportConfig:
    """SavedModel export in TF Serving's layout export/<model_name>/<version>/."""

    model_name: str = "rfcn"
    out_dir: str = "export"
    version: int | None = None  # None: the next free version number

    def validate(self, where: str = "export") -> None:
        """Ranges of the export settings (ConfigError naming the key and value)."""
        _require(
            where,
            "model_name",
            self.model_name,
            bool(self.model_name)
            and not any(c in self.model_name for c in "/\\ \t")
            and self.model_name not in (".", ".."),
            "a folder name (no slashes or spaces)",
        )
        _require(where, "out_dir", self.out_dir, bool(self.out_dir), "a folder")
        if self.version is not None:
            _require(where, "version", self.version, self.version >= 1, ">= 1 or null (next)")


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
    return ConfigError(
        f"unknown config key '{full}'; did you mean '{near_full}'? "
        f"(valid keys here: {', '.join(valid)})"
    )


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks ``value`` against the field's type, converting int -> float where that is lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X], X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        if str in inner[1:] and isinstance(value, str):  # list[float] | str: "auto"
            return value
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
        if (
            isinstance(node, ModelConfig)
            and key in OLD_MODEL_KEYS
            and (key not in names or not isinstance(value, dict))
        ):
            raise ConfigError(_moved_message(f"{path}.{key}", f"{path}.{OLD_MODEL_KEYS[key]}"))
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
        value = parse_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{override}': the value is not valid YAML ({exc})") from exc
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    _merge(config, nested)


def validate(config: Config) -> None:
    """Every top-level section's own ``validate(where)`` (the per-section hook: a section adds
    its range and choice checks by defining that method), then cross-field checks that single
    types cannot express."""
    for field in dataclasses.fields(config):
        check = getattr(getattr(config, field.name), "validate", None)
        if callable(check):
            check(field.name)
    choices = {
        "data.source": (config.data.source, ("shapes", "voc", "coco_json", "tfds", "tfrecord")),
        "train.schedule": (config.train.schedule, ("cosine", "step")),
        "train.scheme": (config.train.scheme, ("joint", "alternating")),
        "train.strategy": (config.train.strategy, ("default", "mirrored", "multi_worker")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    if not config.data.scales:
        raise ConfigError("data.scales must list at least one shorter-side size")
    if config.train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {config.train.batch_size}")
    if (
        config.train.scheme == "alternating"
        and config.train.stage_steps
        and len(config.train.stage_steps) != 4
    ):
        raise ConfigError(
            f"train.stage_steps needs 4 values for the alternating scheme, got {config.train.stage_steps}"
        )


OLD_LAYOUTS = ("error", "migrate")


def load_config(
    name_or_path: str | None = None,
    overrides: typing.Iterable[str] = (),
    *,
    old_layout: str = "error",
) -> Config:
    """Builds the tree: defaults <- the preset/YAML file <- ``overrides`` (``a.b=value`` strings).

    Args:
      name_or_path: a preset name from configs/ (``shapes_tiny``, ``bccd``, ...) or a YAML path;
        None loads ``DEFAULT_CONFIG``.
      overrides: dotted ``key=value`` strings, applied in order.
      old_layout: what a file whose model section has the old flat keys gets: ``"error"``
        (presets and user files: the "moved to" error) or ``"migrate"`` (a run folder's saved
        config.yaml: read as the new sections, with one ConfigWarning). Overrides always use
        the new keys.

    Raises:
      ConfigError: unknown preset or key (with the nearest valid one), wrong value type, an old
        flat model key (naming its new place).
    """
    _check_old_layout(old_layout)
    config = Config()
    path = resolve_config_path(name_or_path or DEFAULT_CONFIG)
    with open(path, encoding="utf-8") as f:
        try:
            values = parse_yaml(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        if old_layout == "migrate":
            values = _migrate_with_warning(values, str(path))
        _merge(config, values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return config


def config_from_dict(values: dict[str, Any], *, old_layout: str = "error") -> Config:
    """A tree from nested dicts (e.g. a saved ``config.yaml`` of a run), checked like a file;
    ``old_layout`` as in :func:`load_config`."""
    _check_old_layout(old_layout)
    if old_layout == "migrate":
        values = _migrate_with_warning(values, "the config")
    config = Config()
    _merge(config, values)
    validate(config)
    return config


def _check_old_layout(old_layout: str) -> None:
    if old_layout not in OLD_LAYOUTS:
        raise ValueError(f"old_layout must be one of {OLD_LAYOUTS}, got {old_layout!r}")


# --------------------------------------------------------------------------------------------
# The old flat model layout (before the per-component sections)

# old flat key of the model section -> its place under model.
OLD_MODEL_KEYS = {
    "backbone": "backbone.name",
    "backbone_weights": "backbone.weights",
    "freeze_stages": "backbone.freeze_stages",
    "small_widths": "backbone.small_widths",
    "small_blocks": "backbone.small_blocks",
    "small_norm": "backbone.small_norm",
    "feature_stride": "backbone.feature_stride",
    "anchor_scales": "anchors.scales",
    "anchor_ratios": "anchors.ratios",
    "rpn_channels": "rpn.channels",
    "rpn_pre_nms_top_n_train": "rpn.pre_nms_top_n_train",
    "rpn_post_nms_top_n_train": "rpn.post_nms_top_n_train",
    "rpn_pre_nms_top_n_test": "rpn.pre_nms_top_n_test",
    "rpn_post_nms_top_n_test": "rpn.post_nms_top_n_test",
    "rpn_nms_iou": "rpn.nms_iou",
    "rpn_min_size": "rpn.min_size",
    "rpn_positive_iou": "rpn.positive_iou",
    "rpn_negative_iou": "rpn.negative_iou",
    "rpn_batch_size": "rpn.batch_size_per_image",
    "rpn_positive_fraction": "rpn.positive_fraction",
    "rpn_allowed_border": "rpn.allowed_border",
    "rpn_loss_weight": "rpn.loss_weight",
    "head_channels": "head.channels",
    "ps_k": "head.k",
    "pooling_mode": "head.pooling_mode",
    "sampling_ratio": "head.sampling_ratio",
    "psroi_impl": "head.psroi_impl",
    "box_weights": "head.box_weights",
    "rfcn_loss_weight": "head.loss_weight",
    "roi_foreground_iou": "roi.foreground_iou",
    "roi_background_iou_low": "roi.background_iou_low",
    "roi_sampling": "roi.sampling",
    "roi_batch_size": "roi.batch_size_per_image",
    "roi_foreground_fraction": "roi.foreground_fraction",
    "ohem_nms_iou": "roi.ohem_nms_iou",
    "score_threshold": "postprocess.score_threshold",
    "nms_iou": "postprocess.nms_iou",
    "max_detections": "postprocess.max_detections",
}


def _moved_message(old: str, new: str) -> str:
    return f"config key '{old}' moved to '{new}' (the model config has one section per component)"


def _is_old_key(key: str, value: Any) -> bool:
    return key in OLD_MODEL_KEYS and not (key == "backbone" and isinstance(value, dict))


def is_old_model_layout(model: Any) -> bool:
    """True when a ``model`` mapping (e.g. of a saved config.yaml) has old flat keys."""
    return isinstance(model, dict) and any(_is_old_key(k, v) for k, v in model.items())


def migrate_old_model_layout(model: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rewrites a model mapping saved with the old flat keys into the per-component sections.

    Args:
      model: the ``model`` mapping of an old ``config.yaml`` (``{"backbone": "small",
        "rpn_nms_iou": 0.7, ...}``); keys already in the new layout pass through.

    Returns:
      ``(sections, moved)``: the nested mapping (``{"backbone": {"name": "small"}, "rpn":
      {"nms_iou": 0.7}, ...}``) and the rewritten keys as ``"model.old -> model.new"``.

    Raises:
      ConfigError: one setting given both ways (old key and its new place).
    """
    sections: dict[str, Any] = {}
    moved = []
    for key, value in model.items():
        if _is_old_key(key, value):
            section, name = OLD_MODEL_KEYS[key].split(".")
            moved.append(f"model.{key} -> model.{section}.{name}")
            entries = {name: value}
        elif isinstance(value, dict):
            section, entries = key, value
        else:
            sections[key] = value  # model.seed, or an unknown key that _merge reports
            continue
        target = sections.setdefault(section, {})
        clash = sorted(set(target) & set(entries)) if isinstance(target, dict) else [""]
        if clash:
            raise ConfigError(f"model.{section}.{clash[0]} is given twice (old and new layout)")
        target.update(entries)
    return sections, moved


def _migrate_with_warning(values: Any, source: str) -> Any:
    if not isinstance(values, dict) or not is_old_model_layout(values.get("model")):
        return values
    sections, moved = migrate_old_model_layout(values["model"])
    warnings.warn(
        f"{source} has the old flat model keys ({len(moved)}, e.g. {moved[0]}); read "
        f"as the per-component sections (rewrite it from --print-config)",
        ConfigWarning,
        stacklevel=3,
    )
    return dict(values, model=sections)


def model_resume_diff(saved: dict[str, Any], current: Config) -> list[str]:
    """Model settings of a saved run that differ from ``current``'s and matter when resuming.

    Args:
      saved: the ``model`` mapping of the run's config.yaml (either layout).
      current: this run's tree.

    Returns:
      ``["model.rpn.channels: 512 -> 128", ...]``: every differing field except those a
      section lists in its ``RESUME_SAFE`` (inference-only settings such as the test proposal
      count, the PS-RoI implementation or the initial weights); empty when resuming is safe.
    """
    saved = dict(saved or {})
    if is_old_model_layout(saved):
        saved, _ = migrate_old_model_layout(saved)
    diff = []
    for field in dataclasses.fields(current.model):
        value = getattr(current.model, field.name)
        if not dataclasses.is_dataclass(value):
            if saved.get(field.name) != value:
                diff.append(f"model.{field.name}: {saved.get(field.name)!r} -> {value!r}")
            continue
        old = dict(dataclasses.asdict(type(value)()), **(saved.get(field.name) or {}))
        for name, new in dataclasses.asdict(value).items():
            if name not in type(value).RESUME_SAFE and old.get(name) != new:
                diff.append(f"model.{field.name}.{name}: {old.get(name)!r} -> {new!r}")
    return diff
