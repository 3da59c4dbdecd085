"""Write any source's split as TF Object Detection API TFRecord shards plus its label map.

    python -m rfcn_tf.data.convert --config bccd --split trainval --out data/bccd_tfrecord \\
        --shards 4

writes `DIR/<split>-00000-of-00004.tfrecord` ... (tf.train.Examples with the OD API keys, see
`rfcn_tf/data/sources/tfrecord.py`), `DIR/label_map.pbtxt` (ids = label + 1, or COCO's
category ids when the source has them in label order) and `DIR/<split>-summary.json` (images,
boxes, files: the tfrecord source reads the split's size from it). Train on the result with

    --set data.source=tfrecord --set data.tfrecord_pattern=DIR/{split}-*.tfrecord

Images: the source file's bytes are copied unchanged when they decode to exactly the pixels the
source yields (JPEG stays JPEG, byte for byte); otherwise (shapes, TFDS, an EXIF-rotated
photo) the source's pixels are stored as PNG, which is lossless. Boxes are the source's
normalized float32 values, so reading the shards back gives the same examples (same pixels,
boxes, labels, flags and image ids; `image/filename` is the file's base name). Examples are
written round-robin (example i to shard i mod N), so the shards hold equal shares and read
back file-interleaved in the source's order. A split converted again replaces its shards;
other splits in DIR share its label map, which must then agree.

Exit status: 0 on success; 1 with one `error: ...` line on a configuration or data problem.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rfcn_tf.cli_args import add_common_arguments, add_config_arguments, run_cli

__all__ = ["build_parser", "convert_split", "main", "make_example"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.data.convert",
        description="Convert a split of the configured source (VOC folder, COCO JSON, TFDS, "
        "shapes, ...) into TFRecord shards of tf.train.Examples in the TF Object "
        "Detection API format, plus label_map.pbtxt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(
        parser,
        print_config=True,
        set_example="data.voc_root=/data/BCCD",
        config_help="the source to convert, e.g. bccd; default: the default preset (shapes_tiny)",
    )
    parser.add_argument(
        "--split", default=None, help="split to convert; default: data.train_split of the config"
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="number of TFRecord files; use at least as many as training "
        "workers so each reads whole files",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="convert at most this many images (required for an endless split "
        "such as shapes train)",
    )
    add_common_arguments(parser)  # --no-progress (the bar over the images), --debug
    return parser


def _bytes_feature(values):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int_feature(values):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _float_feature(values):
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def make_example(
    *,
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    filename: str,
    source_id: str,
    boxes,
    class_ids,
    class_texts,
    difficult,
    is_crowd,
):
    """One tf.train.Example with the OD API keys (boxes: normalized yxyx float32 [N, 4])."""
    import tensorflow as tf

    from rfcn_tf.data.sources.tfrecord import KEYS

    boxes = list(boxes)
    feature = {
        KEYS["encoded"]: _bytes_feature([encoded]),
        KEYS["format"]: _bytes_feature([image_format.encode()]),
        KEYS["height"]: _int_feature([height]),
        KEYS["width"]: _int_feature([width]),
        KEYS["filename"]: _bytes_feature([filename.encode("utf-8")]),
        KEYS["source_id"]: _bytes_feature([source_id.encode("utf-8")]),
        KEYS["ymin"]: _float_feature([b[0] for b in boxes]),
        KEYS["xmin"]: _float_feature([b[1] for b in boxes]),
        KEYS["ymax"]: _float_feature([b[2] for b in boxes]),
        KEYS["xmax"]: _float_feature([b[3] for b in boxes]),
        KEYS["label"]: _int_feature(class_ids),
        KEYS["text"]: _bytes_feature([t.encode("utf-8") for t in class_texts]),
        KEYS["difficult"]: _int_feature(difficult),
        KEYS["is_crowd"]: _int_feature(is_crowd),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _image_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def _encoded_image(filename: str, pixels):
    """(bytes, format, copied): the source file when it decodes to `pixels`, else a PNG."""
    import numpy as np
    import tensorflow as tf

    from rfcn_tf.images import decode_image

    if filename and os.path.isfile(filename):
        data = Path(filename).read_bytes()
        fmt = _image_format(data)
        if fmt is not None:
            try:  # as the tfrecord reader decodes image/encoded: stored pixels, no EXIF turn
                decoded = decode_image(data, apply_exif=False).numpy()
            except tf.errors.OpError:
                decoded = None
            if decoded is not None and np.array_equal(decoded, pixels):
                return data, fmt, True
    return tf.io.encode_png(pixels).numpy(), "png", False


def _label_ids(info) -> list[int]:
    """The label map id of each label: COCO's category ids when they rise with the label
    (the tfrecord reader ranks ids, so the labels come back unchanged), else label + 1."""
    ids = info.category_ids
    if ids and ids[0] > 0 and all(a < b for a, b in itertools.pairwise(ids)):
        return list(ids)
    return list(range(1, info.num_classes + 1))


def convert_split(
    data_cfg,
    *,
    split: str,
    out_dir,
    num_shards: int,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """Writes `split` of `data_cfg`'s source as OD API TFRecord shards (module docstring).

    Args:
      data_cfg: a `DataConfig` naming the source.
      split: the split to convert.
      out_dir: output folder (created).
      num_shards: number of shard files (>= 1).
      max_images: stop after this many images (required when the split is endless).
      progress: show a progress bar on stderr.

    Returns:
      The summary written to `<split>-summary.json`: {"split", "num_examples", "num_boxes",
      "max_boxes_per_image", "files", "class_names", "copied_images", "source"}.

    Raises:
      DataError: an invalid shard count, an endless split without `max_images`, a label map
        in `out_dir` that disagrees, and everything the source raises.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from rfcn_tf.data import label_map as label_map_lib
    from rfcn_tf.data.errors import DataError
    from rfcn_tf.data.pipeline import build_source
    from rfcn_tf.data.sources.tfrecord import LABEL_MAP_FILE, shard_file_name, summary_path

    if num_shards < 1:
        raise DataError(f"--shards must be >= 1, got {num_shards}")
    if max_images is not None and max_images < 1:
        raise DataError(f"--max-images must be >= 1, got {max_images}")
    dataset, info = build_source(data_cfg, split=split)
    endless = int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY
    if endless and max_images is None:
        raise DataError(
            f"split {split!r} of source {data_cfg.source!r} is endless: give --max-images"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = label_map_lib.items_from_class_names(info.class_names, _label_ids(info))
    map_path = out / LABEL_MAP_FILE
    if map_path.exists():
        existing = label_map_lib.read_label_map(map_path)
        if [(i.id, i.class_name) for i in existing] != [(i.id, i.class_name) for i in items]:
            raise DataError(
                f"{map_path} already lists other classes "
                f"({label_map_lib.class_names_of(existing)}) than split {split!r} of "
                f"this source ({info.class_names}): use another --out folder"
            )
    label_map_lib.write_label_map(map_path, items)

    names = [shard_file_name(split, i, num_shards) for i in range(num_shards)]
    temps = [out / (n + ".tmp") for n in names]
    writers = [tf.io.TFRecordWriter(str(t)) for t in temps]
    count = boxes_total = max_boxes = copied = 0
    total = (
        info.num_examples
        if max_images is None
        else (max_images if info.num_examples is None else min(max_images, info.num_examples))
    )
    if max_images is not None:
        dataset = dataset.take(max_images)
    try:
        for ex in tqdm(
            dataset.as_numpy_iterator(),
            total=total,
            unit="img",
            desc=split,
            disable=not progress,
            file=sys.stderr,
        ):
            filename = ex["filename"].decode("utf-8", "replace")
            encoded, fmt, was_copied = _encoded_image(filename, ex["image"])
            labels = ex["labels"].tolist()
            example = make_example(
                encoded=encoded,
                image_format=fmt,
                height=ex["image"].shape[0],
                width=ex["image"].shape[1],
                filename=os.path.basename(filename),
                source_id=str(int(ex["image_id"])),
                boxes=ex["boxes"].tolist(),
                class_ids=[items[lab].id for lab in labels],
                class_texts=[items[lab].name for lab in labels],
                difficult=ex["is_difficult"].astype(int).tolist(),
                is_crowd=ex["is_crowd"].astype(int).tolist(),
            )
            writers[count % num_shards].write(example.SerializeToString())
            count += 1
            copied += int(was_copied)
            boxes_total += len(labels)
            max_boxes = max(max_boxes, len(labels))
    except BaseException:
        for w, t in zip(writers, temps):
            w.close()
            t.unlink(missing_ok=True)
        raise
    for w in writers:
        w.close()
    # Shards of an earlier conversion of this split (maybe another count) would match the glob.
    for stale in out.glob(f"{split}-?????-of-?????.tfrecord"):
        stale.unlink()
    for name, temp in zip(names, temps):
        os.replace(temp, out / name)
    summary = {
        "split": split,
        "num_examples": count,
        "num_boxes": boxes_total,
        "max_boxes_per_image": max_boxes,
        "files": names,
        "class_names": list(info.class_names),
        "copied_images": copied,
        "source": data_cfg.source,
    }
    summary_path(out, split).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rfcn_tf.config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        from rfcn_tf.config import validate

        validate(config)
        print(config.to_yaml(), end="")
        return 0
    split = args.split or config.data.train_split
    summary = convert_split(
        config.data,
        split=split,
        out_dir=args.out,
        num_shards=args.shards,
        max_images=args.max_images,
        progress=not args.no_progress,
    )
    print(
        f"converted {config.data.source} split {split!r}: {summary['num_examples']} images, "
        f"{summary['num_boxes']} boxes -> {len(summary['files'])} shards in {args.out} "
        f"({summary['copied_images']} image files copied, the rest stored as PNG)",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with one `error:` line; the
    traceback with --debug), through `rfcn_tf.cli_args.run_cli`."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
