"""Pascal VOC folders: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt.

The XML files of a split are parsed once, in Python (xml.etree), into arrays; the images are read
and decoded inside tf.data by a parallel map (`base.file_examples`), so decoding runs on all cores.

Shape shorthand: N boxes of one image, C classes.

Conventions:
    - VOC coordinates are 1-based pixel indices, both ends inclusive: a box (xmin, ymin, xmax,
      ymax) covers the continuous pixel area [xmin - 1, xmax] x [ymin - 1, ymax]; it is
      normalized by the decoded image's size (docs/ARCHITECTURE.md: normalized yxyx) and clipped to it.
    - A box with xmax <= xmin or ymax <= ymin is dropped; one warning per split counts them and
      names the files.
    - Class names come from the caller (labels follow its order) or are discovered from every
      XML file under Annotations/ (sorted, so train and validation agree on the labels).
    - `image_id` is the image's index in the split file; `filename` the image's full path.
    - Annotation problems (missing split file, missing or malformed XML, unknown class name)
      raise `DataError` at build time. Image problems follow `skip_corrupt` (base module).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources.base import folder_source, logger

__all__ = [
    "BCCD_ENV_VAR",
    "BCCD_ROOT",
    "default_voc_root",
    "discover_class_names",
    "from_config",
    "parse_voc_xml",
    "resolve_voc_root",
    "voc_source",
]

BCCD_ENV_VAR = "RFCN_BCCD_DIR"
# The one data.voc_root value with a default folder (the bccd preset's): $RFCN_BCCD_DIR, else
# ../shared/data/BCCD from the repository root. Any other VOC config must name its folder.
BCCD_ROOT = "@bccd"

# Parsed annotations by path, reused while the file is unchanged (mtime, size).
_PARSED: dict[str, tuple[tuple[int, int], dict]] = {}


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[3]


def default_voc_root() -> Path:
    """The BCCD folder: `$RFCN_BCCD_DIR`, else `../shared/data/BCCD` from the repository root."""
    env = os.environ.get(BCCD_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return (_repository_root() / ".." / "shared" / "data" / "BCCD").resolve()


def resolve_voc_root(voc_root: str | None) -> Path:
    """`data.voc_root` -> an existing folder path.

    `BCCD_ROOT` ("@bccd", the bccd preset's value) means `default_voc_root()`. A relative path
    is tried from the working directory, then from the repository root. None is an error: no
    VOC config silently falls back to the BCCD folder.

    Raises:
      DataError: unset, or the folder does not exist (the message names every path tried).
    """
    if voc_root is None:
        raise DataError(
            "data.voc_root is not set: a VOC source needs its folder (with "
            "Annotations/, JPEGImages/, ImageSets/Main/); set it in the YAML or "
            "with --set data.voc_root=PATH (only the bccd preset has a default "
            f'folder, data.voc_root: "{BCCD_ROOT}")'
        )
    if voc_root == BCCD_ROOT:
        candidates = [default_voc_root()]
    else:
        path = Path(voc_root).expanduser()
        candidates = (
            [path] if path.is_absolute() else [Path.cwd() / path, _repository_root() / path]
        )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    how = (
        f"data.voc_root={voc_root!r}"
        if voc_root != BCCD_ROOT
        else f"data.voc_root={BCCD_ROOT!r} and ${BCCD_ENV_VAR}="
        f"{os.environ.get(BCCD_ENV_VAR, '(unset)')}"
    )
    raise DataError(f"VOC folder not found: {', '.join(str(c) for c in candidates)} ({how})")


def _text(node, tag: str, xml_path, default=None):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise DataError(f"{xml_path}: <{tag}> is missing in <{node.tag}>")
    return child.text.strip()


def _number(node, tag: str, xml_path) -> float:
    raw = _text(node, tag, xml_path)
    try:
        return float(raw)
    except ValueError:
        raise DataError(f"{xml_path}: <{tag}> must be a number, got {raw!r}") from None


def _annotated_size(root) -> tuple[int, int]:
    """(height, width) of `<size>`, (0, 0) when absent or not positive integers (unknown)."""
    size = root.find("size")
    try:
        hw = (int(float(size.findtext("height"))), int(float(size.findtext("width"))))
    except (AttributeError, TypeError, ValueError):
        return (0, 0)
    return hw if min(hw) > 0 else (0, 0)


def parse_voc_xml(xml_path) -> dict:
    """Reads one VOC annotation file.

    Returns:
      `{"filename": str or None, "objects": [{"name": str, "box": (xmin, ymin, xmax, ymax)
      floats as written (1-based, inclusive), "difficult": bool}, ...], "size": (height,
      width) of `<size>` or (0, 0)}`; the size decides whether the image's EXIF orientation is
      applied (`rfcn_tf.images.orient_for_annotation`).

    Raises:
      DataError: missing or malformed file, a missing or non-numeric coordinate.
    """
    xml_path = str(xml_path)
    try:
        stat = os.stat(xml_path)
    except OSError as exc:
        raise DataError(f"annotation file not found: {xml_path} ({exc.strerror})") from None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _PARSED.get(xml_path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{xml_path}: not valid XML ({exc})") from None
    objects = []
    for obj in root.findall("object"):
        name = _text(obj, "name", xml_path)
        box_node = obj.find("bndbox")
        if box_node is None:
            raise DataError(f"{xml_path}: object {name!r} has no <bndbox>")
        box = tuple(_number(box_node, t, xml_path) for t in ("xmin", "ymin", "xmax", "ymax"))
        difficult = _text(obj, "difficult", xml_path, default="0") not in ("0", "false", "False")
        objects.append({"name": name, "box": box, "difficult": difficult})
    filename_node = root.find("filename")
    filename = (
        filename_node.text.strip() if filename_node is not None and filename_node.text else None
    )
    parsed = {"filename": filename, "objects": objects, "size": _annotated_size(root)}
    _PARSED[xml_path] = (key, parsed)
    return parsed


def discover_class_names(root) -> list[str]:
    """Sorted distinct object names over every Annotations/*.xml under `root`."""
    folder = Path(root) / "Annotations"
    if not folder.is_dir():
        raise DataError(f"annotation folder not found: {folder}")
    names = set()
    for xml_path in sorted(folder.glob("*.xml")):
        names.update(obj["name"] for obj in parse_voc_xml(xml_path)["objects"])
    if not names:
        raise DataError(
            f"no objects found in {folder}/*.xml: cannot discover class names; set data.class_names"
        )
    return sorted(names)


def _split_ids(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        folder = split_file.parent
        available = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise DataError(
            f"split file not found: {split_file} (split {split!r}; available: "
            f"{', '.join(available) or 'none'})"
        )
    ids = []
    for line in split_file.read_text().splitlines():
        fields = line.split()
        if fields:
            ids.append(fields[0])
    if not ids:
        raise DataError(f"split file {split_file} lists no images")
    return ids


def _image_path(root: Path, image_id: str, xml_filename: str | None) -> Path:
    default = root / "JPEGImages" / f"{image_id}.jpg"
    if default.is_file() or not xml_filename:
        return default
    named = root / "JPEGImages" / xml_filename
    return named if named.is_file() else default


def voc_source(
    root,
    *,
    split: str,
    class_names: Sequence[str] | None = None,
    skip_corrupt: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    max_images: int | None = None,
):
    """Examples of one split of a VOC-layout folder.

    Args:
      root: folder holding Annotations/, JPEGImages/, ImageSets/Main/.
      split: name of ImageSets/Main/<split>.txt.
      class_names: label order; None discovers them (sorted) from every annotation file.
      skip_corrupt: skip unreadable images with one counted warning per pass (else an error
        naming the file; missing image files then fail here, at build time, as DataError).
      shuffle, seed: shuffle the file list every pass (before decoding).
      shard: (num_shards, index): this worker's share of the files.
      num_parallel_calls: decoding parallelism.
      max_images: keep only the first N ids of the split file, sorted by id (a deterministic
        subset, `data.max_train_images`); None keeps the split file's ids in its order.

    Returns:
      (examples dataset, DatasetInfo): one pass over the split.

    Raises:
      DataError: missing folder or split file, missing or malformed XML, a class name not in
        `class_names`, missing image files (unless skip_corrupt).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC folder not found: {root}")
    names = list(class_names) if class_names else discover_class_names(root)
    label_of = {name: i for i, name in enumerate(names)}
    ids = _split_ids(root, split)
    if max_images is not None:
        ids = sorted(ids)[:max_images]

    records = {
        "path": [],
        "image_id": [],
        "boxes": [],
        "labels": [],
        "is_difficult": [],
        "is_crowd": [],
        "size": [],
    }
    degenerate: dict[str, int] = {}
    missing = []
    for index, image_id in enumerate(ids):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        parsed = parse_voc_xml(xml_path)
        boxes, labels, difficult = [], [], []
        for obj in parsed["objects"]:
            if obj["name"] not in label_of:
                raise DataError(
                    f"{xml_path}: class name {obj['name']!r} is not one of the "
                    f"configured classes {names}"
                )
            xmin, ymin, xmax, ymax = obj["box"]
            if xmax <= xmin or ymax <= ymin:
                degenerate[xml_path.name] = degenerate.get(xml_path.name, 0) + 1
                continue
            boxes.append((ymin - 1.0, xmin - 1.0, ymax, xmax))
            labels.append(label_of[obj["name"]])
            difficult.append(obj["difficult"])
        path = _image_path(root, image_id, parsed["filename"])
        if not skip_corrupt and not path.is_file():
            missing.append(str(path))
        records["path"].append(str(path))
        records["image_id"].append(index)
        records["boxes"].append(np.asarray(boxes, np.float32).reshape(-1, 4))
        records["labels"].append(np.asarray(labels, np.int32))
        records["is_difficult"].append(np.asarray(difficult, bool))
        records["is_crowd"].append(np.zeros(len(labels), bool))
        records["size"].append(parsed.get("size", (0, 0)))
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) of split {split!r} not found: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''} "
            "(set data.skip_corrupt=true to skip them)"
        )
    if degenerate:
        files = ", ".join(f"{name} ({count})" for name, count in sorted(degenerate.items()))
        logger.warning(
            "voc %s split %r: dropped %d boxes with xmax <= xmin or ymax <= ymin: %s",
            root,
            split,
            sum(degenerate.values()),
            files,
        )
    return folder_source(
        records,
        description=f"voc {root} split {split!r}",
        class_names=names,
        num_examples=len(ids),
        skip_corrupt=skip_corrupt,
        shuffle=shuffle,
        seed=seed,
        shard=shard,
        num_parallel_calls=num_parallel_calls,
    )


def from_config(
    data_cfg,
    *,
    split: str,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
):
    """`voc_source` with its arguments read from a `DataConfig`."""
    return voc_source(
        resolve_voc_root(data_cfg.voc_root),
        split=split,
        class_names=data_cfg.class_names,
        skip_corrupt=data_cfg.skip_corrupt,
        shuffle=shuffle,
        seed=seed,
        shard=shard,
        num_parallel_calls=data_cfg.num_parallel_calls,
        max_images=data_cfg.max_train_images if split == data_cfg.train_split else None,
    )
