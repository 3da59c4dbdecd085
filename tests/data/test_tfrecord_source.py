"""The tfrecord source: OD API tf.train.Examples, label maps, sharding, broken files and records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers.data_fixtures import data_config, random_pixels

from rfcn_tf.data import label_map as lm
from rfcn_tf.data.convert import make_example
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_dataset, build_source
from rfcn_tf.data.sources import tfrecord

ITEMS = [lm.LabelMapItem(1, "cat"), lm.LabelMapItem(5, "dog", "Dog")]  # gap: ids 1 and 5


def _example(i, *, boxes=((0.1, 0.2, 0.5, 0.6),), ids=(5,), texts=None, h=24, w=32, **over):
    pixels = random_pixels(h, w, seed=i)
    fields = dict(
        encoded=tf.io.encode_png(pixels).numpy(),
        image_format="png",
        height=h,
        width=w,
        filename=f"img_{i}.png",
        source_id=str(100 + i),
        boxes=boxes,
        class_ids=ids,
        class_texts=texts if texts is not None else ["cat" if c == 1 else "dog" for c in ids],
        difficult=[0] * len(ids),
        is_crowd=[0] * len(ids),
    )
    fields.update(over)
    return make_example(**fields).SerializeToString(), pixels


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            writer.write(r)
    return str(path)


def _files(tmp_path, num_files, per_file, split="train"):
    """num_files shards of per_file examples each (example k in file k % num_files)."""
    records = [[] for _ in range(num_files)]
    pixels = {}
    for k in range(num_files * per_file):
        rec, px = _example(k)
        records[k % num_files].append(rec)
        pixels[100 + k] = px
    files = [
        _write(tmp_path / tfrecord.shard_file_name(split, i, num_files), r)
        for i, r in enumerate(records)
    ]
    lm.write_label_map(tmp_path / "label_map.pbtxt", ITEMS)
    return files, pixels


def _ids(dataset):
    return [int(ex["image_id"]) for ex in dataset.as_numpy_iterator()]


def test_examples_decode_with_label_ranks_and_flags(tmp_path):
    rec, pixels = _example(
        0,
        boxes=[(0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 1.0), (0.3, 0.3, 0.3, 0.9)],
        ids=[5, 1, 1],
        difficult=[1, 0, 0],
        is_crowd=[0, 1, 0],
    )
    path = _write(tmp_path / "a.tfrecord", [rec])
    dataset, info = tfrecord.tfrecord_source([path], class_items=ITEMS)
    assert info.class_names == ["cat", "Dog"]
    assert info.num_examples is None  # no converter summary
    (ex,) = list(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(ex["image"], pixels)
    assert ex["image_id"] == 100 and ex["filename"] == b"img_0.png"
    # The zero-height third box is dropped; ids 5, 1 are ranks 1, 0.
    np.testing.assert_allclose(ex["boxes"], [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], atol=1e-7)
    np.testing.assert_array_equal(ex["labels"], [1, 0])
    np.testing.assert_array_equal(ex["is_difficult"], [True, False])
    np.testing.assert_array_equal(ex["is_crowd"], [False, True])


def test_class_text_used_when_label_ids_absent_and_source_id_hashed(tmp_path):
    rec, _ = _example(
        0,
        boxes=[(0.1, 0.1, 0.2, 0.2)] * 2,
        ids=[],
        texts=["dog", "cat"],
        difficult=[],
        is_crowd=[],
        source_id="not-a-number",
    )
    rec2, _ = _example(1, boxes=[], ids=[], texts=[], difficult=[], is_crowd=[], source_id="")
    dataset, _ = tfrecord.tfrecord_source(
        [_write(tmp_path / "a.tfrecord", [rec, rec2])], class_items=ITEMS
    )
    first, second = list(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(first["labels"], [1, 0])
    expected = tf.strings.to_hash_bucket_fast("not-a-number", 2**62).numpy()
    assert first["image_id"] == expected
    assert second["boxes"].shape == (0, 4) and second["image_id"] >= 0
    assert second["image_id"] != first["image_id"]


def test_from_config_glob_split_and_label_map_beside_shards(tmp_path):
    _files(tmp_path, 3, 2, split="train")
    _files(tmp_path, 1, 1, split="val")
    cfg = data_config(source="tfrecord", tfrecord_pattern=str(tmp_path / "{split}-*.tfrecord"))
    dataset, info = build_source(cfg, split="train")
    assert info.class_names == ["cat", "Dog"]
    # Written round-robin, read file-interleaved: the original order comes back.
    assert _ids(dataset) == [100, 101, 102, 103, 104, 105]
    assert _ids(build_source(cfg, split="val")[0]) == [100]


def test_shard_by_file_when_enough_files_else_by_record(tmp_path):
    files, _ = _files(tmp_path, 4, 3)
    parts = [tfrecord.tfrecord_source(files, class_items=ITEMS, shard=(2, i))[0] for i in range(2)]
    ids = [_ids(p) for p in parts]
    # 4 files over 2 workers: whole files 0, 2 and 1, 3 (example k lives in file k % 4).
    assert sorted(ids[0]) == [100 + k for k in range(12) if k % 4 in (0, 2)]
    assert sorted(ids[1]) == [100 + k for k in range(12) if k % 4 in (1, 3)]
    # 4 files over 8 workers: every 8th record of all files, disjoint and complete.
    parts = [
        _ids(tfrecord.tfrecord_source(files, class_items=ITEMS, shard=(8, i))[0]) for i in range(8)
    ]
    assert sorted(i for p in parts for i in p) == [100 + k for k in range(12)]
    assert all(len(p) in (1, 2) for p in parts)


def test_training_pipeline_shuffles_and_batches(tmp_path):
    _files(tmp_path, 2, 4)
    cfg = data_config(
        source="tfrecord",
        tfrecord_pattern=str(tmp_path / "train-*.tfrecord"),
        scales=[48],
        max_size=64,
        max_boxes=3,
        shuffle_buffer=8,
    )
    batches = list(build_dataset(cfg, split="train", training=True, batch_size=2).take(8))
    ids = [int(i) for b in batches for i in b["image_ids"].numpy()]
    assert set(ids) == {100 + k for k in range(8)}  # two passes, all images
    assert ids[:8] != sorted(ids[:8])  # shuffled
    assert batches[0]["gt_boxes"].shape[0] == 2 and batches[0]["images"].shape[1] % 16 == 0


def test_missing_files_label_map_and_class_mismatch(tmp_path):
    cfg = data_config(source="tfrecord", tfrecord_pattern=str(tmp_path / "{split}-*.tfrecord"))
    with pytest.raises(DataError, match=r"no TFRecord files match .*train-\*\.tfrecord"):
        build_source(cfg, split="train")
    with pytest.raises(DataError, match="data.tfrecord_pattern is unset"):
        build_source(data_config(source="tfrecord"), split="train")
    _write(tmp_path / "train-0.tfrecord", [_example(0)[0]])
    with pytest.raises(DataError, match=r"no label map: .*label_map.pbtxt does not exist"):
        build_source(cfg, split="train")
    lm.write_label_map(tmp_path / "label_map.pbtxt", ITEMS)
    with pytest.raises(DataError, match=r"data.class_names=\['dog', 'cat'\] differs"):
        build_source(
            data_config(
                source="tfrecord", class_names=["dog", "cat"], tfrecord_pattern=cfg.tfrecord_pattern
            ),
            split="train",
        )


def _error_of(path, **kwargs):
    dataset, _ = tfrecord.tfrecord_source([path], class_items=ITEMS, **kwargs)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(dataset.as_numpy_iterator())
    message = info.value.message
    assert "DataError:" in message and path in message
    return message


def test_truncated_file_error_names_file(tmp_path):
    path = _write(tmp_path / "a.tfrecord", [_example(i)[0] for i in range(3)])
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-40])
    message = _error_of(path)
    assert "is truncated or corrupt after record 2" in message


def test_garbage_file_error_names_file(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    Path(path).write_bytes(b"this is not a tfrecord file at all" * 10)
    assert "is truncated or corrupt after record 0" in _error_of(path)


def test_record_that_is_not_an_example_names_file_and_record(tmp_path):
    path = _write(tmp_path / "a.tfrecord", [_example(0)[0], b"\x08\x96\x01garbage"])
    assert "record 1 is not a tf.train.Example" in _error_of(path)


def test_unequal_box_lists_name_file_and_record(tmp_path):
    rec, _ = _example(0, ids=[5, 5])  # one box, two labels
    assert "record 0 has per-box lists of unequal length" in _error_of(
        _write(tmp_path / "a.tfrecord", [rec])
    )


def test_label_missing_from_label_map_names_file(tmp_path):
    rec, _ = _example(0, ids=[3])
    message = _error_of(_write(tmp_path / "a.tfrecord", [rec]))
    assert "record 0 has a class not in the label map" in message
    assert "(label map ids: [1, 5])" in message and "class/label [3]" in message


def test_undecodable_image_fails_or_is_skipped(tmp_path, data_warnings):
    bad, _ = _example(1, encoded=b"not an image")
    path = _write(tmp_path / "a.tfrecord", [_example(0)[0], bad, _example(2)[0]])
    assert "record 1 (image/filename img_1.png): image/encoded cannot be decoded" in (
        _error_of(path)
    )
    dataset, _ = tfrecord.tfrecord_source([path], class_items=ITEMS, skip_corrupt=True)
    assert _ids(dataset) == [100, 102]
    assert any("skipped 1 of 3 images" in m and "img_1.png" in m for m in data_warnings())


def _varied_example(k):
    """Record k of a mix: 0 to 3 boxes, labels by id or by text only, flags given or absent."""
    num = k % 4
    boxes = [(0.1 * j, 0.05 * (k % 5), 0.1 * j + 0.3, 0.6) for j in range(num)]
    ids = [(1, 5)[(k + j) % 2] for j in range(num)]
    texts = ["cat" if c == 1 else "Dog" for c in ids]
    if k % 3 == 0:  # class/text only
        return _example(k, boxes=boxes, ids=[], texts=texts, difficult=[], is_crowd=[])[0], ids
    flags = [(k + j) % 2 for j in range(num)]
    return _example(k, boxes=boxes, ids=ids, texts=texts, difficult=flags, is_crowd=flags)[0], ids


def test_batched_parse_equals_the_per_record_parse(tmp_path):
    per_parse = tfrecord._RECORDS_PER_PARSE
    records = [_varied_example(k)[0] for k in range(per_parse + 3)]
    records.insert(5, b"\x08\x96\x01garbage")  # flags only this one; the rest still parse
    for batch in (records[per_parse:], records):  # a clean batch; one with a broken record
        parsed, ok = tfrecord._parse_batch_or_flag(tf.constant(batch))
        for b, record in enumerate(batch):
            single, single_ok = tfrecord._parse_or_flag(tf.constant(record))
            assert bool(ok[b]) == bool(single_ok) == (record != records[5])
            for key, value in single.items():
                row = parsed[key][b]
                row = row.numpy() if not isinstance(row, tf.RaggedTensor) else row.flat_values
                np.testing.assert_array_equal(np.asarray(row), value.numpy(), err_msg=key)


def test_multi_batch_files_give_every_example_in_order(tmp_path):
    per_parse = tfrecord._RECORDS_PER_PARSE
    count = 2 * per_parse + 5  # three parse batches, the last one partial
    written = [_varied_example(k) for k in range(count)]
    files = [
        _write(tmp_path / f"train-{i}.tfrecord", [r for r, _ in written[i::2]]) for i in range(2)
    ]
    dataset, _ = tfrecord.tfrecord_source(files, class_items=ITEMS)
    examples = list(dataset.as_numpy_iterator())
    assert [int(ex["image_id"]) for ex in examples] == [100 + k for k in range(count)]
    for k, ex in enumerate(examples):
        ids = written[k][1]
        assert ex["filename"] == f"img_{k}.png".encode()
        expected = [(0.1 * j, 0.05 * (k % 5), 0.1 * j + 0.3, 0.6) for j in range(len(ids))]
        np.testing.assert_allclose(ex["boxes"].reshape(-1, 4), np.reshape(expected, (-1, 4)))
        np.testing.assert_array_equal(ex["labels"], [{1: 0, 5: 1}[c] for c in ids])
        flags = [False] * len(ids) if k % 3 == 0 else [(k + j) % 2 == 1 for j in range(len(ids))]
        np.testing.assert_array_equal(ex["is_difficult"], flags)
        np.testing.assert_array_equal(ex["is_crowd"], flags)


def test_broken_record_inside_a_parse_batch_names_its_index(tmp_path):
    per_parse = tfrecord._RECORDS_PER_PARSE
    records = [_example(k)[0] for k in range(2 * per_parse)]
    bad = per_parse + per_parse // 2  # the middle of the second parse batch
    records[bad] = b"\x08\x96\x01garbage"
    message = _error_of(_write(tmp_path / "a.tfrecord", records))
    assert f"record {bad} is not a tf.train.Example" in message
