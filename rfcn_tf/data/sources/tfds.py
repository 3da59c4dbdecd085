"""TensorFlow Datasets detection datasets (voc/2007, voc/2012, coco/2017, ...).

Any TFDS dataset whose features have `image` and `objects/{bbox, label}` works. TFDS boxes are
already normalized yxyx and labels already 0..C-1 (the conventions docs/ARCHITECTURE.md adopts), so this
source only renames keys, maps the optional `objects/is_difficult` and `objects/is_crowd`, and
decodes the image itself (TFDS's decoding is skipped) so that an unreadable image follows the
`skip_corrupt` policy like the folder sources.

Shape shorthand: N boxes of one image, C classes.

Conventions:
    - Several datasets concatenate when the name has `+` (`"voc/2007+voc/2012"`, the paper's
      VOC 07+12 training set) or is a list; they must share their class names.
    - `image_id`: `image/id` when the dataset has it (COCO); else the digits of
      `image/filename` when it is all digits and underscores (VOC: 000005.jpg -> 5,
      2008_000123.jpg -> 2008000123); else a 62-bit hash of the file name.
    - `filename`: `image/filename` when present, else "<dataset>/<split>".
    - Boxes are clipped to [0, 1]; boxes without area are dropped and counted per pass.
    - Nothing is downloaded in tests: they use `tfds.testing.mock_data`.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources.base import (
    DatasetInfo,
    clip_and_filter_boxes,
    decode_image_or_flag,
    finalize_examples,
)

__all__ = ["from_config", "split_names", "tfds_source"]


def split_names(names: str | Sequence[str]) -> list[str]:
    """`"voc/2007+voc/2012"` or `["voc/2007", "voc/2012"]` -> `["voc/2007", "voc/2012"]`."""
    if isinstance(names, str):
        parts = [p.strip() for p in names.split("+")]
    else:
        parts = [str(p).strip() for p in names]
    if not parts or not all(parts):
        raise DataError(f"tfds dataset name must be 'a' or 'a+b' or a list, got {names!r}")
    return parts


def _image_id(ex: dict, filename: tf.Tensor) -> tf.Tensor:
    if "image/id" in ex:
        return tf.cast(ex["image/id"], tf.int64)
    base = tf.strings.regex_replace(filename, r"\.[^.]*$", "")
    numeric = tf.strings.regex_full_match(base, r"[0-9_]{1,18}")
    digits = tf.strings.regex_replace(base, "_", "")
    return tf.cond(
        numeric & (tf.strings.length(digits) > 0),
        lambda: tf.strings.to_number(digits, tf.int64),
        lambda: tf.strings.to_hash_bucket_fast(filename, 2**62),
    )


def _one_dataset(
    name: str,
    *,
    split: str,
    data_dir: str | None,
    manual_dir: str | None,
    shuffle: bool,
    seed: int,
    shard: tuple[int, int] | None,
    shuffle_buffer: int,
    num_parallel_calls: int,
):
    import tensorflow_datasets as tfds  # imported here: slow to import, only this source needs it

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # DatasetNotFoundError and friends
        raise DataError(f"unknown TFDS dataset {name!r}: {exc}") from exc
    features = builder.info.features
    objects = features["objects"] if "objects" in features else None
    if (
        "image" not in features
        or objects is None
        or "bbox" not in objects.keys()
        or ("label" not in objects.keys())
    ):
        raise DataError(
            f"TFDS dataset {name!r} is not a detection dataset: it needs features "
            f"'image' and 'objects/bbox', 'objects/label'; it has {features}"
        )
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    except Exception as exc:
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} and "
            f"preparing it failed (manual_dir={manual_dir!r}): {exc}"
        ) from exc
    known_splits = list(builder.info.splits.keys()) if builder.info.splits else []
    base_split = split.split("[")[0]
    if known_splits and base_split not in known_splits:
        raise DataError(
            f"TFDS dataset {name!r} has no split {split!r} (splits: {', '.join(known_splits)})"
        )
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=shuffle,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    cardinality = int(dataset.cardinality())
    num_examples = cardinality if cardinality >= 0 else None
    if num_examples is None and known_splits:
        num_examples = builder.info.splits[split].num_examples
    if shard is not None:
        dataset = dataset.shard(*shard)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    object_keys = set(objects.keys())
    label_names = list(objects["label"].names)

    def convert(ex):
        obj = ex["objects"]
        filename = (
            ex["image/filename"] if "image/filename" in ex else tf.constant(f"{name}/{split}")
        )
        image, ok = decode_image_or_flag(ex["image"])
        n = tf.shape(obj["label"])[0]
        no = tf.zeros([n], tf.bool)
        difficult = tf.cast(obj["is_difficult"], tf.bool) if "is_difficult" in object_keys else no
        crowd = tf.cast(obj["is_crowd"], tf.bool) if "is_crowd" in object_keys else no
        boxes, labels, difficult, crowd, dropped = clip_and_filter_boxes(
            tf.reshape(obj["bbox"], [-1, 4]), tf.cast(obj["label"], tf.int32), difficult, crowd
        )
        return {
            "image": image,
            "image_id": _image_id(ex, filename),
            "filename": filename,
            "boxes": boxes,
            "labels": labels,
            "is_difficult": difficult,
            "is_crowd": crowd,
            "_ok": ok,
            "_dropped": dropped,
        }

    dataset = dataset.map(
        tf.autograph.experimental.do_not_convert(convert), num_parallel_calls=num_parallel_calls
    )
    return dataset, label_names, num_examples


def tfds_source(
    names: str | Sequence[str],
    *,
    split: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    class_names: Sequence[str] | None = None,
    skip_corrupt: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    shuffle_buffer: int = 256,
    num_parallel_calls: int = tf.data.AUTOTUNE,
):
    """Examples of one split of one or several concatenated TFDS detection datasets.

    Args:
      names: `"voc/2007"`, `"voc/2007+voc/2012"`, or a list of names.
      split: TFDS split (slicing such as `"train[:10%]"` works), the same for every dataset.
      data_dir: TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets).
      manual_dir: where manually downloaded archives are (TFDS DownloadConfig.manual_dir).
      class_names: optional display names replacing the TFDS label names (same count).
      skip_corrupt: skip undecodable images with one counted warning per pass.
      shuffle, seed: shuffle the record files and records (still encoded) every pass.
      shard: (num_shards, index): this worker's share of the records.
      shuffle_buffer: records held by the shuffle buffer.
      num_parallel_calls: decoding parallelism.

    Returns:
      (examples dataset, DatasetInfo): one pass.

    Raises:
      DataError: unknown dataset or split, not a detection dataset, not prepared and preparing
        failed, concatenated datasets with different classes, `class_names` of a wrong length.
    """
    parts = split_names(names)
    datasets, label_names, total = [], None, 0
    for part in parts:
        dataset, part_labels, count = _one_dataset(
            part,
            split=split,
            data_dir=data_dir,
            manual_dir=manual_dir,
            shuffle=shuffle,
            seed=seed,
            shard=shard,
            shuffle_buffer=shuffle_buffer,
            num_parallel_calls=num_parallel_calls,
        )
        if label_names is not None and part_labels != label_names:
            raise DataError(
                f"cannot concatenate TFDS datasets with different classes: "
                f"{parts[0]} has {label_names}, {part} has {part_labels}"
            )
        label_names = part_labels
        total = None if total is None or count is None else total + count
        datasets.append(dataset)
    dataset = datasets[0]
    for other in datasets[1:]:
        dataset = dataset.concatenate(other)
    if class_names:
        if len(class_names) != len(label_names):
            raise DataError(
                f"data.class_names has {len(class_names)} names but TFDS "
                f"{'+'.join(parts)} has {len(label_names)} classes: {label_names}"
            )
        label_names = list(class_names)
    description = f"tfds {'+'.join(parts)} split {split!r}"
    dataset = finalize_examples(dataset, skip_corrupt=skip_corrupt, description=description)
    return dataset, DatasetInfo(class_names=label_names, num_examples=total)


def from_config(
    data_cfg,
    *,
    split: str,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
):
    """`tfds_source` with its arguments read from a `DataConfig`.

    Every split but `data_cfg.train_split` reads `data_cfg.eval_tfds_name` when it is set: the
    paper's VOC recipe trains on voc/2007+voc/2012 trainval and tests on voc/2007 test only.
    """
    name = data_cfg.tfds_name
    if data_cfg.eval_tfds_name and split != data_cfg.train_split:
        name = data_cfg.eval_tfds_name
    return tfds_source(
        name,
        split=split,
        data_dir=data_cfg.data_dir,
        manual_dir=data_cfg.manual_dir,
        class_names=data_cfg.class_names,
        skip_corrupt=data_cfg.skip_corrupt,
        shuffle=shuffle,
        seed=seed,
        shard=shard,
        shuffle_buffer=data_cfg.shuffle_buffer,
        num_parallel_calls=data_cfg.num_parallel_calls,
    )
