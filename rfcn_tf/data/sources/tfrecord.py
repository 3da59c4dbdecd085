"""TFRecord files of tf.train.Examples in the TF Object Detection API's format.

A user migrating from the OD API trains on the files they already have; `python -m
rfcn_tf.data.convert` writes any other source into this format (docs/ARCHITECTURE.md, "Data").

Shape shorthand: N boxes of one image, C classes, F shard files.

Keys read (every one optional except `image/encoded`; missing lists mean "no boxes" / "all
False"):
    image/encoded                       bytes    JPEG/PNG/GIF/BMP/WebP, decoded here
    image/height, image/width           int64    not used: boxes are normalized already
    image/filename                      bytes    becomes the example's `filename`
    image/source_id                     bytes    the image id: a decimal string becomes that
                                                 number, anything else a 62-bit hash of it
    image/object/bbox/{ymin,xmin,ymax,xmax}  float [N]  normalized to the image, clipped to
                                                 [0, 1]; boxes without area are dropped (counted)
    image/object/class/label            int64 [N]  the label map's ids (1-based, gaps allowed)
    image/object/class/text             bytes [N]  used only when class/label is absent
    image/object/difficult              int64 [N]  VOC difficult (0/1)
    image/object/is_crowd               int64 [N]  COCO iscrowd (0/1)

Classes: the label map (`data.label_map`; default `label_map.pbtxt` in the folder of the
first shard) lists the ids; dataset label = rank of the id among the label map's ids
(`rfcn_tf.data.label_map`), class names = the items' display_name (else name).

Files: `data.tfrecord_pattern` is a glob (`{split}` is replaced by the split name), e.g.
`data/bccd_tfrecord/{split}-*.tfrecord`; the matched files are sorted. They are read
file-interleaved (block 1, so files written round-robin by the converter read back in their
original order). With a shard (`num_shards`, `index`) from the input context, each worker reads
whole files (`files[index::num_shards]`, TF's AutoShardPolicy.FILE) when there are at least as
many files as workers, and every num_shards-th record of all files otherwise (DATA). Without a
shard the dataset keeps TF's AUTO policy, which applies the same rule when a strategy
distributes it. Training reshuffles the file order every pass and the serialized records in a
`shuffle_buffer`.

The split's size and its most boxes per image come from the converter's `<split>-summary.json`
beside the shards when its file list matches; otherwise they are unknown (None) and nothing
counts the records (ground truth is then padded per batch).

Bad data fails with an error naming the shard file and the record's index in it (DataError at
build time for a missing pattern or label map; inside tf.data an InvalidArgumentError whose
message starts with "DataError:"): a truncated or corrupt file, a record that is not a
tf.train.Example with these keys' types, bbox lists of unequal length, a label id missing from
the label map, or an image that cannot be decoded (that one follows `data.skip_corrupt`).
"""

from __future__ import annotations

import glob as glob_lib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from rfcn_tf.data import label_map as label_map_lib
from rfcn_tf.data.errors import DATA_ERROR_PREFIX, DataError
from rfcn_tf.data.sources.base import (
    DatasetInfo,
    clip_and_filter_boxes,
    decode_image_or_flag,
    finalize_examples,
)

__all__ = [
    "KEYS",
    "LABEL_MAP_FILE",
    "from_config",
    "resolve_files",
    "shard_file_name",
    "summary_path",
    "tfrecord_source",
]

LABEL_MAP_FILE = "label_map.pbtxt"

# The OD API's tf.train.Example keys (object_detection/core/standard_fields.py, TfExampleFields).
KEYS = {
    "encoded": "image/encoded",
    "format": "image/format",
    "height": "image/height",
    "width": "image/width",
    "filename": "image/filename",
    "source_id": "image/source_id",
    "xmin": "image/object/bbox/xmin",
    "ymin": "image/object/bbox/ymin",
    "xmax": "image/object/bbox/xmax",
    "ymax": "image/object/bbox/ymax",
    "label": "image/object/class/label",
    "text": "image/object/class/text",
    "difficult": "image/object/difficult",
    "is_crowd": "image/object/is_crowd",
}

# TFRecord framing around each record: length (8) + its CRC (4) + data + data CRC (4).
_FRAME_BYTES = 16
# Files read at once by the interleave (all of them up to this many: round-robin order kept).
_MAX_CYCLE = 64
# Records per step of the per-file byte count (`_file_records`).
_RECORDS_PER_STEP = 8
# Records parsed at once (`_parse_batch_or_flag`): the guard costs ~0.8 ms per batch.
_RECORDS_PER_PARSE = 32
_HASH_BUCKETS = 2**62


def shard_file_name(split: str, index: int, num_shards: int) -> str:
    """`<split>-00000-of-00004.tfrecord`: the converter's shard names (the OD API's pattern)."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def summary_path(folder, split: str) -> Path:
    """The converter's per-split summary (`num_examples`, `files`, ...) in `folder`."""
    return Path(folder) / f"{split}-summary.json"


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[3]


def resolve_files(pattern: str, split: str) -> list[str]:
    """The sorted files matching `pattern` (`{split}` replaced); a relative pattern is tried from
    the working directory, then from the repository root. Remote (gs://...) via tf.io.gfile.

    Raises:
      DataError: no file matches (the message names every pattern tried).
    """
    if not pattern:
        raise DataError(
            "data.tfrecord_pattern is unset: give the shard files' glob, e.g. "
            "data/bccd_tfrecord/{split}-*.tfrecord"
        )
    pattern = str(pattern).replace("{split}", split)
    if "://" in pattern:
        files = sorted(tf.io.gfile.glob(pattern))
        tried = [pattern]
    else:
        expanded = os.path.expanduser(pattern)
        tried = (
            [expanded]
            if os.path.isabs(expanded)
            else [os.path.join(os.getcwd(), expanded), str(_repository_root() / expanded)]
        )
        files = []
        for candidate in tried:
            files = sorted(p for p in glob_lib.glob(candidate) if os.path.isfile(p))
            if files:
                break
    if not files:
        raise DataError(
            f"no TFRecord files match {' or '.join(tried)} (data.tfrecord_pattern, split {split!r})"
        )
    return files


def _file_size(path: str) -> int:
    return int(tf.io.gfile.stat(path).length)


def _summary(files: Sequence[str], split: str) -> dict:
    """The converter's summary when it describes exactly these files, else {}."""
    folder = os.path.dirname(files[0])
    try:
        summary = json.loads(Path(summary_path(folder, split)).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict) or any(os.path.dirname(f) != folder for f in files):
        return {}
    if sorted(summary.get("files", [])) != sorted(os.path.basename(f) for f in files):
        return {}
    return summary


def _feature_spec():
    var = tf.io.VarLenFeature
    return {
        KEYS["encoded"]: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEYS["filename"]: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEYS["source_id"]: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEYS["xmin"]: var(tf.float32),
        KEYS["ymin"]: var(tf.float32),
        KEYS["xmax"]: var(tf.float32),
        KEYS["ymax"]: var(tf.float32),
        KEYS["label"]: var(tf.int64),
        KEYS["text"]: var(tf.string),
        KEYS["difficult"]: var(tf.int64),
        KEYS["is_crowd"]: var(tf.int64),
    }


def _parse_or_flag(record: tf.Tensor):
    """Parses one serialized record -> (dict of dense tensors, ok bool []), never raising.

    A record that is not a tf.train.Example or has a key of the wrong type raises inside
    parse_single_example; as in `base.decode_image_or_flag`, the parse runs in a one-element
    dataset with `ignore_errors()` followed by a fallback element. Used only for a batch whose
    batched parse failed (`_parse_batch_or_flag`), to find its broken records.
    """
    spec = _feature_spec()

    def parse(r):
        parsed = tf.io.parse_single_example(r, spec)
        return {
            k: tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v
            for k, v in parsed.items()
        }, tf.constant(True)

    inner = (
        tf.data.Dataset.from_tensors(record)
        .map(tf.autograph.experimental.do_not_convert(parse))
        .ignore_errors()
    )
    empty = {
        k: tf.zeros([0], s.dtype)
        if isinstance(s, tf.io.VarLenFeature)
        else tf.constant("", tf.string)
        for k, s in spec.items()
    }
    fallback = tf.data.Dataset.from_tensors((empty, tf.constant(False)))
    return inner.concatenate(fallback).take(1).get_single_element()


def _batch_feature_spec():
    """`_feature_spec` for tf.io.parse_example: each list key a RaggedFeature (rows [B, None])."""
    return {
        k: tf.io.RaggedFeature(s.dtype, row_splits_dtype=tf.int64)
        if isinstance(s, tf.io.VarLenFeature)
        else s
        for k, s in _feature_spec().items()
    }


def _parse_batch_or_flag(records: tf.Tensor):
    """Parses serialized records string [B] -> (dict, ok bool [B]), never raising.

    The dict holds string [B] for the scalar keys and ragged [B, None] rows for the list keys;
    `Dataset.unbatch` turns them into `_parse_or_flag`'s dense per-record tensors. The whole
    batch is parsed by ONE tf.io.parse_example under ONE ignore_errors guard: the guard (a
    nested dataset, ~0.3 ms) per record cost more than the parse itself (measured, BCCD
    records: 0.53 ms per record guarded one by one, 0.34 in guarded batches of 8, 0.18
    unguarded). Only when the batch raises are its records parsed one by one
    (`_parse_or_flag`), so that exactly the broken ones are flagged and their error names
    their own index. `concatenate` opens the fallback only after the batched parse yielded
    nothing, so a clean batch never runs it.
    """

    def parse(r):
        return tf.io.parse_example(r, _batch_feature_spec()), tf.ones_like(r, dtype=tf.bool)

    batched = (
        tf.data.Dataset.from_tensors(records)
        .map(tf.autograph.experimental.do_not_convert(parse))
        .ignore_errors()
    )
    one_by_one = (
        tf.data.Dataset.from_tensor_slices(records)
        .map(tf.autograph.experimental.do_not_convert(_parse_or_flag))
        # All of them in one element (a batch size >= 1 even for no records).
        .ragged_batch(tf.maximum(tf.size(records, out_type=tf.int64), 1))
    )
    return batched.concatenate(one_by_one).take(1).get_single_element()


def _text(part) -> tf.Tensor:
    """One piece of an error message as a string tensor (strings unquoted, lists formatted)."""
    if isinstance(part, str):
        return tf.constant(part)
    if part.dtype == tf.string and part.shape.rank == 0:
        return part
    if part.shape.rank == 0:
        return tf.strings.as_string(part)
    return tf.strings.format("{}", [part], summarize=8)


def _check(condition, *parts) -> tf.Operation:
    """Assert(condition) whose message is the parts joined into ONE line (DataError prefix)."""
    message = tf.strings.join([_text(p) for p in (DATA_ERROR_PREFIX + " ",) + parts])
    return tf.debugging.Assert(condition, [message], summarize=1)


def _check_file_end(filename, size, consumed, records):
    """Asserts that the records read from `filename` account for all of its bytes."""
    return _check(
        tf.equal(consumed, size),
        "TFRecord file ",
        filename,
        " is truncated or corrupt after record ",
        records,
        " (read ",
        consumed,
        " of ",
        size,
        " bytes; is it an uncompressed TFRecord file?)",
    )


def _file_records(filename: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """(filename, record index, serialized record) of one file; at the end of the file, an error
    naming it when the records read do not cover its bytes (TF's own DataLossError names no
    file, so the reader skips it with ignore_errors and checks the byte count instead).

    The byte count runs over small batches of records (one scan step per batch, not per
    record), then the batches are split again.
    """
    batches = tf.data.TFRecordDataset(filename).ignore_errors().batch(_RECORDS_PER_STEP)
    marked = batches.map(lambda r: (r, tf.constant(False)))
    marked = marked.concatenate(
        tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), tf.constant(True)))
    )

    def step(state, element):
        consumed, count = state
        records, is_end = element

        def at_end():
            with tf.control_dependencies([_check_file_end(filename, size, consumed, count)]):
                return tf.identity(count)

        count = tf.cond(is_end, at_end, lambda: count)
        n = tf.size(records, out_type=tf.int64)
        consumed += tf.reduce_sum(tf.cast(tf.strings.length(records), tf.int64)) + (
            _FRAME_BYTES * n
        )
        return (consumed, count + n), (tf.fill([n], filename), count + tf.range(n), records)

    scanned = marked.scan(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        tf.autograph.experimental.do_not_convert(step),
    )
    return scanned.unbatch()


def _image_id(source_id: tf.Tensor, fallback: tf.Tensor) -> tf.Tensor:
    """int64 []: a decimal source_id as its number, otherwise a hash of it (or of `fallback`)."""
    text = tf.where(tf.strings.length(source_id) > 0, source_id, fallback)
    numeric = tf.strings.regex_full_match(text, r"-?[0-9]{1,18}")
    # Selects instead of a tf.cond (fewer ops per record); to_number would raise on a
    # non-numeric text, so it converts "0" then.
    number = tf.strings.to_number(tf.where(numeric, text, "0"), tf.int64)
    return tf.where(numeric, number, tf.strings.to_hash_bucket_fast(text, _HASH_BUCKETS))


def _or_zeros(flags: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """int64 [N]: `flags`, or n zeros when the list is absent (empty)."""
    missing = tf.where(tf.equal(tf.size(flags), 0), n, 0)
    return tf.concat([flags, tf.zeros([missing], flags.dtype)], 0)


def _record_fields(parsed: dict, *, id_table, name_table) -> dict:
    """A parsed record's boxes, labels, flags and the inputs of its checks (not yet raised).

    Selects and concatenations instead of a tf.cond per optional list (fewer ops per record;
    the old ones' results are kept: labels from class/label, else from class/text; absent
    flags are all 0).

    Returns:
      dict: coords (list of 4 float32 [N]: ymin, xmin, ymax, xmax), labels int32 [N'] (label
      map ranks, -1 unknown), difficult, crowd int64 [N''], n int32 [], lengths int32 [6] (the
      other lists' lengths), lengths_ok, labels_ok bool [], label_ids int64 and texts string
      (as stored).
    """
    coords = [parsed[KEYS[k]] for k in ("ymin", "xmin", "ymax", "xmax")]
    n = tf.size(coords[0])
    label_ids, texts = parsed[KEYS["label"]], parsed[KEYS["text"]]
    # class/text is used only without class/label ids: then the id lookup is empty, otherwise
    # the texts are cut to nothing, so the concatenation holds one of the two.
    use_text = tf.logical_and(tf.equal(tf.size(label_ids), 0), tf.size(texts) > 0)
    used_texts = texts[: tf.where(use_text, tf.size(texts), 0)]
    labels = tf.concat([id_table.lookup(label_ids), name_table.lookup(used_texts)], 0)
    difficult = _or_zeros(parsed[KEYS["difficult"]], n)
    crowd = _or_zeros(parsed[KEYS["is_crowd"]], n)
    lengths = tf.stack(
        [tf.size(c) for c in coords[1:]] + [tf.size(labels), tf.size(difficult), tf.size(crowd)]
    )
    return {
        "coords": coords,
        "labels": labels,
        "difficult": difficult,
        "crowd": crowd,
        "n": n,
        "lengths": lengths,
        "lengths_ok": tf.reduce_all(tf.equal(lengths, n)),
        "labels_ok": tf.reduce_all(labels >= 0),
        "label_ids": label_ids,
        "texts": texts,
    }


def tfrecord_source(
    files: Sequence[str],
    *,
    class_items: Sequence[label_map_lib.LabelMapItem],
    split: str = "",
    skip_corrupt: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    shuffle_buffer: int = 256,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    num_examples: int | None = None,
    max_boxes_per_image: int | None = None,
):
    """Examples (base module's dict) of OD API tf.train.Examples in `files`.

    Args:
      files: the shard files (`resolve_files`), read in this order.
      class_items: the label map's class items (`label_map.read_label_map`): label = rank of
        the id.
      split: names the split in messages.
      skip_corrupt: an image that cannot be decoded is skipped (counted) instead of failing.
        Broken records and files always fail.
      shuffle, seed: reshuffle the file order every pass and records in a `shuffle_buffer`.
      shard: (num_shards, index): by file when len(files) >= num_shards, else by record.
      num_parallel_calls: parallelism of the parse/decode map and of the file interleave.
      num_examples, max_boxes_per_image: the split's size and most boxes in one image, when
        known (DatasetInfo; the converter's summary has them).

    Returns:
      (dataset of example dicts, one pass; DatasetInfo).

    Raises:
      DataError: no files, no class items, or an invalid shard.
    """
    files = [str(f) for f in files]
    if not files:
        raise DataError(f"no TFRecord files for split {split!r}")
    items = sorted(class_items, key=lambda i: i.id)
    if not items:
        raise DataError("the label map has no class items")
    description = f"tfrecord split {split!r} ({len(files)} files, first {files[0]})"
    by_data = None
    if shard is not None:
        num, index = shard
        if not 0 <= index < num:
            raise DataError(f"shard index must be in [0, {num}), got {index}")
        if len(files) >= num:
            files = files[index::num]
        else:
            by_data = shard
        num_examples = None  # this worker's share is unknown
    sizes = [_file_size(f) for f in files]

    ids = tf.constant([i.id for i in items], tf.int64)
    id_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.range(len(items), dtype=tf.int32)), -1
    )
    name_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant([i.name for i in items] + [i.display_name or i.name for i in items]),
            tf.concat([tf.range(len(items), dtype=tf.int32)] * 2, 0),
        ),
        -1,
    )

    file_ds = tf.data.Dataset.from_tensor_slices((tf.constant(files), tf.constant(sizes, tf.int64)))
    if shuffle:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = min(len(files), _MAX_CYCLE)
    records = file_ds.interleave(
        _file_records,
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=min(cycle, 8) if cycle > 1 else None,
    )
    if by_data is not None:
        records = records.shard(*by_data)
    if shuffle:
        records = records.shuffle(
            max(int(shuffle_buffer), 1), seed=seed, reshuffle_each_iteration=True
        )

    def parse(filenames, indices, serialized):
        parsed, parsed_ok = _parse_batch_or_flag(serialized)
        return filenames, indices, parsed, parsed_ok

    # Parsed in batches after the interleave, shard and shuffle: the records cross those with
    # 3 components instead of a parsed record's 12 (each costs per element and stage), and a
    # worker parses only its own share. The order is unchanged; a file's truncation error
    # (raised by the byte count) discards the records of its unfinished parse batch.
    records = (
        records.batch(_RECORDS_PER_PARSE)
        .map(tf.autograph.experimental.do_not_convert(parse), num_parallel_calls=num_parallel_calls)
        .unbatch()
    )
    label_map_ids = [i.id for i in items]

    def raise_errors(where, parsed_ok, fields, raw_filename, decoded):
        """The record's failed checks as a DataError: run only for a record that fails one, so
        the messages are formatted only then. The parse check comes first (a record that is
        not an Example has no lists to check), the image last."""
        parse_check = _check(
            parsed_ok,
            *where,
            " is not a tf.train.Example with the OD API keys' types "
            "(image/encoded bytes, bbox float lists, class/label int64 list...)",
        )
        with tf.control_dependencies([parse_check]):
            checks = [
                _check(
                    fields["lengths_ok"],
                    *where,
                    " has per-box lists of unequal length (ymin: ",
                    fields["n"],
                    "; xmin, ymax, xmax, class, difficult, is_crowd: ",
                    fields["lengths"],
                    ")",
                ),
                _check(
                    fields["labels_ok"],
                    *where,
                    " has a class not in the label map: class/label ",
                    fields["label_ids"],
                    ", class/text ",
                    fields["texts"],
                    f" (label map ids: {label_map_ids})",
                ),
            ]
        if not skip_corrupt:
            with tf.control_dependencies(checks):
                checks = [
                    _check(
                        decoded,
                        *where,
                        " (image/filename ",
                        raw_filename,
                        "): image/encoded cannot be decoded (missing or corrupt); "
                        "set data.skip_corrupt=true to skip such images",
                    )
                ]
        with tf.control_dependencies(checks):
            return tf.constant(False)

    def load(filename, index, parsed, parsed_ok):
        fields = _record_fields(parsed, id_table=id_table, name_table=name_table)
        image, ok = decode_image_or_flag(parsed[KEYS["encoded"]])
        raw_filename = parsed[KEYS["filename"]]
        valid = parsed_ok & fields["lengths_ok"] & fields["labels_ok"]
        if not skip_corrupt:
            valid &= ok
        # One cond per record instead of an Assert per check, whose messages were formatted
        # for every record.
        checked = tf.cond(
            valid,
            lambda: tf.constant(True),
            lambda: raise_errors(
                ("TFRecord file ", filename, " record ", index), parsed_ok, fields, raw_filename, ok
            ),
        )
        with tf.control_dependencies([checked]):
            # After the checks: stacking lists of unequal lengths would raise a bare op error.
            boxes = tf.stack(fields["coords"], axis=-1)
            ok = tf.identity(ok)
        record_name = tf.strings.join([filename, "#", tf.strings.as_string(index)])
        boxes, labels, difficult, crowd, dropped = clip_and_filter_boxes(
            boxes, fields["labels"], fields["difficult"], fields["crowd"]
        )
        return {
            "image": image,
            "image_id": _image_id(parsed[KEYS["source_id"]], record_name),
            "filename": tf.where(tf.strings.length(raw_filename) > 0, raw_filename, record_name),
            "boxes": boxes,
            "labels": tf.cast(labels, tf.int32),
            "is_difficult": difficult > 0,
            "is_crowd": crowd > 0,
            "_ok": ok,
            "_dropped": dropped,
        }

    dataset = records.map(
        tf.autograph.experimental.do_not_convert(load), num_parallel_calls=num_parallel_calls
    )
    dataset = finalize_examples(dataset, skip_corrupt=skip_corrupt, description=description)
    info = DatasetInfo(
        class_names=label_map_lib.class_names_of(items),
        num_examples=num_examples,
        max_boxes_per_image=max_boxes_per_image,
    )
    return dataset, info


def _resolve_label_map(label_map: str | None, files: Sequence[str]) -> str:
    if label_map is None:
        path = os.path.join(os.path.dirname(files[0]), LABEL_MAP_FILE)
        if not tf.io.gfile.exists(path):
            raise DataError(
                f"no label map: data.label_map is unset and {path} does not exist "
                "(give the OD API's label_map.pbtxt)"
            )
        return path
    path = os.path.expanduser(str(label_map))
    if "://" in path or os.path.isabs(path):
        return path
    for candidate in (os.path.join(os.getcwd(), path), str(_repository_root() / path)):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"label map not found: data.label_map={label_map!r}")


def from_config(
    data_cfg,
    *,
    split: str,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
):
    """`tfrecord_source` with its arguments read from a `DataConfig`.

    `data.class_names`, when set, must equal the label map's class names (in id order): the
    label map is what defines the ids of the files.
    """
    files = resolve_files(data_cfg.tfrecord_pattern, split)
    summary = _summary(files, split)
    label_map_path = _resolve_label_map(data_cfg.label_map, files)
    items = label_map_lib.read_label_map(label_map_path)
    names = label_map_lib.class_names_of(items)
    if data_cfg.class_names is not None and list(data_cfg.class_names) != names:
        raise DataError(
            f"data.class_names={list(data_cfg.class_names)} differs from the label "
            f"map {label_map_path} ({names}); unset data.class_names or fix the map"
        )
    return tfrecord_source(
        files,
        class_items=items,
        split=split,
        skip_corrupt=data_cfg.skip_corrupt,
        shuffle=shuffle,
        seed=seed,
        shard=shard,
        shuffle_buffer=data_cfg.shuffle_buffer,
        num_parallel_calls=data_cfg.num_parallel_calls,
        num_examples=summary.get("num_examples"),
        max_boxes_per_image=summary.get("max_boxes_per_image"),
    )
