"""COCO-style detection data: an instances JSON file and a folder of images.

The JSON file is read once in Python into arrays; images are read and decoded inside tf.data
(`base.file_examples`).

Shape shorthand: N boxes of one image, C classes.

Conventions:
    - Categories map to contiguous labels 0..C-1, in ascending category id (or in the order of
      `class_names` when given); `DatasetInfo.category_ids[label]` gives the category id back, for
      writing detections in COCO's ids at evaluation.
    - COCO boxes are `[x, y, width, height]` in continuous pixels; they are converted once to yxyx
      with `rfcn_tf.ops.boxes.xywh_to_yxyx`, then normalized by the decoded image's size and
      clipped to it. A box with width <= 0 or height <= 0 is dropped; one warning per split
      counts them and names the files.
    - `image_id` is the COCO image id; `filename` the image's full path; `is_crowd` is `iscrowd`.
    - Images without annotations are kept (negative examples); images are ordered by id.
    - A path may contain `{split}`, replaced by the split name: with
      `coco_annotations: /data/coco/annotations/instances_{split}.json` and
      `coco_images: /data/coco/{split}`, the splits `train2017` and `val2017` read their own files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources.base import folder_source, logger
from rfcn_tf.ops import boxes as box_ops

__all__ = ["coco_source", "from_config", "load_coco_annotations"]


def _annotated_size(image_entry) -> tuple[int, int]:
    """(height, width) of a COCO image entry; (0, 0) when absent or not positive (unknown)."""
    try:
        hw = (int(image_entry["height"]), int(image_entry["width"]))
    except (KeyError, TypeError, ValueError):
        return (0, 0)
    return hw if min(hw) > 0 else (0, 0)


def _format_split(path: str, split: str) -> Path:
    return Path(str(path).replace("{split}", split)).expanduser()


def load_coco_annotations(path) -> dict:
    """Reads an instances JSON file, checking the three lists detection needs.

    Raises:
      DataError: missing file, invalid JSON, or no `images` / `annotations` / `categories` list.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: the '{key}' list is missing")
    return data


def coco_source(
    annotations,
    images,
    *,
    split: str = "",
    class_names: Sequence[str] | None = None,
    skip_corrupt: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    max_images: int | None = None,
):
    """Examples of a COCO instances file.

    Args:
      annotations: path of the instances JSON file (`{split}` is replaced by `split`).
      images: folder the JSON's `file_name`s are relative to (`{split}` likewise).
      split: the split name, for `{split}` and messages.
      class_names: label order by category name; None: every category, by ascending id.
      skip_corrupt: skip unreadable images with one counted warning per pass (else an error
        naming the file; missing image files then fail here, at build time, as DataError).
      shuffle, seed: shuffle the image list every pass (before decoding).
      shard: (num_shards, index): this worker's share of the images.
      num_parallel_calls: decoding parallelism.
      max_images: keep only the first N images by ascending id (a deterministic subset,
        `data.max_train_images`); None keeps them all.

    Returns:
      (examples dataset, DatasetInfo with category_ids): one pass over the images.

    Raises:
      DataError: missing files, malformed JSON, an annotation whose category is not in
        `class_names` or whose image id is unknown, an image id used by two images, a
        configured class with no category.
    """
    json_path = _format_split(annotations, split)
    image_dir = _format_split(images, split)
    data = load_coco_annotations(json_path)
    if not image_dir.is_dir():
        raise DataError(f"COCO image folder not found: {image_dir} (split {split!r})")

    categories = sorted(data["categories"], key=lambda c: c["id"])
    name_of = {c["id"]: c["name"] for c in categories}
    if class_names:
        names = list(class_names)
        id_of = {c["name"]: c["id"] for c in categories}
        unknown = [n for n in names if n not in id_of]
        if unknown:
            raise DataError(
                f"{json_path}: configured classes {unknown} are not categories of "
                f"the file (categories: {sorted(id_of)})"
            )
        category_ids = [id_of[n] for n in names]
    else:
        names = [c["name"] for c in categories]
        category_ids = [c["id"] for c in categories]
    label_of = {cid: label for label, cid in enumerate(category_ids)}

    for index, im in enumerate(data["images"]):
        if (
            not isinstance(im, dict)
            or isinstance(im.get("id"), bool)
            or not isinstance(im.get("id"), int)
            or not isinstance(im.get("file_name"), str)
        ):
            raise DataError(
                f"{json_path}: images[{index}] needs an integer 'id' and a "
                f"'file_name' string, got {im!r}"[:300]
            )
    image_entries = sorted(data["images"], key=lambda im: im["id"])
    file_of: dict[int, str] = {}
    for im in image_entries:
        if im["id"] in file_of:
            # Merging would give one image the annotations of both files.
            raise DataError(
                f"{json_path}: image id {im['id']} is used twice, by "
                f"{file_of[im['id']]!r} and {im['file_name']!r}; image ids must be "
                f"unique"
            )
        file_of[im["id"]] = im["file_name"]
    per_image: dict[int, list] = {im["id"]: [] for im in image_entries}
    degenerate: dict[str, int] = {}
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        if image_id not in per_image:
            raise DataError(
                f"{json_path}: annotation id {ann.get('id')} refers to image_id "
                f"{image_id}, which is not in 'images'"
            )
        cid = ann.get("category_id")
        if cid not in label_of:
            name = name_of.get(cid, f"<category id {cid} not in 'categories'>")
            raise DataError(
                f"{json_path}: annotation id {ann.get('id')} of image "
                f"{file_of[image_id]} has class {name!r}, which is not one of the "
                f"configured classes {names}"
            )
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            degenerate[file_of[image_id]] = degenerate.get(file_of[image_id], 0) + 1
            continue
        per_image[image_id].append(((x, y, w, h), label_of[cid], bool(ann.get("iscrowd", 0))))
    if degenerate:
        files = ", ".join(f"{name} ({count})" for name, count in sorted(degenerate.items()))
        logger.warning(
            "coco %s: dropped %d boxes with width <= 0 or height <= 0: %s",
            json_path,
            sum(degenerate.values()),
            files,
        )

    records = {
        "path": [],
        "image_id": [],
        "boxes": [],
        "labels": [],
        "is_difficult": [],
        "is_crowd": [],
        "size": [],
    }
    missing = []
    if max_images is not None:
        image_entries = image_entries[:max_images]  # sorted by id above
    for im in image_entries:
        path = image_dir / im["file_name"]
        if not skip_corrupt and not path.is_file():
            missing.append(str(path))
        anns = per_image[im["id"]]
        xywh = np.asarray([a[0] for a in anns], np.float32).reshape(-1, 4)
        records["path"].append(str(path))
        records["image_id"].append(int(im["id"]))
        records["boxes"].append(xywh)
        records["labels"].append(np.asarray([a[1] for a in anns], np.int32))
        records["is_difficult"].append(np.zeros(len(anns), bool))
        records["is_crowd"].append(np.asarray([a[2] for a in anns], bool))
        records["size"].append(_annotated_size(im))  # decides EXIF (rfcn_tf/images.py)
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) of {json_path} not found: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''} "
            "(set data.skip_corrupt=true to skip them)"
        )
    if not records["path"]:
        raise DataError(f"{json_path}: the 'images' list is empty")
    # One conversion for all boxes of the split (COCO xywh exists only up to here).
    lengths = [len(b) for b in records["boxes"]]
    yxyx = box_ops.xywh_to_yxyx(np.concatenate(records["boxes"])).numpy()
    records["boxes"] = np.split(yxyx, np.cumsum(lengths)[:-1])
    return folder_source(
        records,
        description=f"coco {json_path}",
        class_names=names,
        num_examples=len(image_entries),
        category_ids=category_ids,
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
    """`coco_source` with its arguments read from a `DataConfig`."""
    if not data_cfg.coco_annotations or not data_cfg.coco_images:
        raise DataError(
            "data.source=coco_json needs data.coco_annotations (instances JSON) and "
            f"data.coco_images (image folder); got {data_cfg.coco_annotations!r} and "
            f"{data_cfg.coco_images!r}"
        )
    return coco_source(
        data_cfg.coco_annotations,
        data_cfg.coco_images,
        split=split,
        class_names=data_cfg.class_names,
        skip_corrupt=data_cfg.skip_corrupt,
        shuffle=shuffle,
        seed=seed,
        shard=shard,
        num_parallel_calls=data_cfg.num_parallel_calls,
        max_images=data_cfg.max_train_images if split == data_cfg.train_split else None,
    )
