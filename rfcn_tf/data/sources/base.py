"""What every source yields, and the tf.data pieces the sources share.

Shape shorthand:
    H0, W0  original image height and width (pixels)
    N       boxes of one image

The example dict (docs/INTERFACES.md, "Examples"), one image, unbatched:
    image         uint8  [H0, W0, 3]  RGB, original size
    image_id      int64  []           COCO image id; index in the split for VOC folders and shapes
    filename      string []           source file (full path for folder sources) or synthetic name
    boxes         float32 [N, 4]      normalized yxyx in [0, 1] (docs/ARCHITECTURE.md), area > 0
    labels        int32  [N]          0..C-1
    is_difficult  bool   [N]          VOC "difficult"
    is_crowd      bool   [N]          COCO iscrowd

Inside a source, before `finalize_examples`, an example carries two more keys:
    _ok           bool   []           False when the image could not be read or decoded
    _dropped      int32  []           boxes dropped inside tf.data (no area after clipping)
`finalize_examples` turns `_ok == False` into an error naming the file (default) or skips the
example and reports the counts in ONE warning at the end of each pass (`skip_corrupt=True`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from rfcn_tf import images
from rfcn_tf.data.errors import DATA_ERROR_PREFIX

__all__ = [
    "EXAMPLE_KEYS",
    "DatasetInfo",
    "clip_and_filter_boxes",
    "decode_image_or_flag",
    "example_spec",
    "file_examples",
    "finalize_examples",
    "folder_source",
    "logger",
    "read_image_or_flag",
    "records_dataset",
    "without_python_callbacks",
]

logger = logging.getLogger("rfcn_tf.data")

EXAMPLE_KEYS = ("image", "image_id", "filename", "boxes", "labels", "is_difficult", "is_crowd")

# How many skipped file names the end-of-pass warning quotes.
_MAX_NAMED = 5


@dataclasses.dataclass
class DatasetInfo:
    """Facts about a source that its consumers need.

    Attributes:
      class_names: C names; `class_names[label]` names dataset label `label` (model class
        `label + 1`).
      num_examples: images in one pass of the split; None for an endless stream (shapes train)
        or when unknown.
      category_ids: COCO only: `category_ids[label]` is the COCO category id of `label`, for
        writing detections back in COCO's ids; None elsewhere.
      max_boxes_per_image: an upper bound on the boxes of any one image of the split, when the
        source knows it before reading pixels (folder sources parse every annotation up front);
        the pipeline pads ground truth to at least this many rows. None: unknown.
    """

    class_names: list[str]
    num_examples: int | None
    category_ids: list[int] | None = None
    max_boxes_per_image: int | None = None

    def __post_init__(self):
        self.class_names = list(self.class_names)
        if self.category_ids is not None:
            self.category_ids = [int(c) for c in self.category_ids]
            if len(self.category_ids) != len(self.class_names):
                raise ValueError(
                    f"category_ids has {len(self.category_ids)} entries but there are "
                    f"{len(self.class_names)} class names"
                )

    @property
    def num_classes(self) -> int:
        """C, the number of classes without background."""
        return len(self.class_names)


def example_spec() -> dict[str, tf.TensorSpec]:
    """The element_spec every source's dataset has (the table in the module docstring)."""
    return {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "image_id": tf.TensorSpec([], tf.int64),
        "filename": tf.TensorSpec([], tf.string),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "labels": tf.TensorSpec([None], tf.int32),
        "is_difficult": tf.TensorSpec([None], tf.bool),
        "is_crowd": tf.TensorSpec([None], tf.bool),
    }


def _try_or_flag(fn: Callable[[tf.Tensor], tuple], arg: tf.Tensor):
    """Runs `fn(arg)` -> (uint8 [H, W, 3], int32 []) inside tf.data, turning any op error into
    a flag.

    tf.data cannot catch an op error inside a map function, so the call runs in a one-element
    nested dataset with `ignore_errors()`, followed by a fallback element: `take(1)` yields the
    result when `fn` succeeded and the fallback `([0, 0, 3] zeros, 1, False)` when it raised.
    Measured here: no throughput cost against a bare decode (JPEG 640x480).

    Returns:
      (image uint8 [H, W, 3] ([0, 0, 3] on failure), orientation int32 [], ok bool []).
    """
    inner = tf.data.Dataset.from_tensors(arg).map(
        tf.autograph.experimental.do_not_convert(lambda a: fn(a) + (tf.constant(True),))
    )
    inner = inner.ignore_errors()
    fallback = tf.data.Dataset.from_tensors(
        (tf.zeros([0, 0, 3], tf.uint8), tf.constant(1, tf.int32), tf.constant(False))
    )
    image, orientation, ok = inner.concatenate(fallback).take(1).get_single_element()
    image = tf.ensure_shape(image, [None, None, 3])
    return image, orientation, ok


def _decode_stored(contents: tf.Tensor):
    # THE decoder (rfcn_tf/images.py): TF's decode_image, channels=3, uint8 (16-bit PNGs
    # mapped by TF's dtype conversion), first GIF frame; the EXIF orientation is returned
    # beside the stored pixels so the annotation rule can decide whether to apply it.
    return (images.decode_image(contents, apply_exif=False), images.exif_orientation(contents))


def decode_image_or_flag(contents: tf.Tensor):
    """Decodes encoded image bytes (string []) -> (uint8 [H, W, 3], ok bool []), never raising.

    The pixels are as stored (no EXIF orientation): the TFDS sources' boxes are normalized to
    the stored image.
    """
    image, _, ok = _try_or_flag(_decode_stored, contents)
    return image, ok


def read_image_or_flag(path: tf.Tensor, annotated_hw=None):
    """Reads and decodes the image file at `path` (string []) -> (uint8 [H, W, 3], ok bool []).

    A missing, unreadable, empty, truncated or non-image file gives ok == False (and a
    [0, 0, 3] image) instead of an op error, so the caller decides: fail naming the file, or skip.

    Args:
      path: string [].
      annotated_hw: int [2] (height, width) the annotation records, (0, 0) when unknown; the
        EXIF orientation is applied as `rfcn_tf.images.orient_for_annotation` decides (an
        image matching neither orientation fails with a "DataError:" InvalidArgumentError
        naming the file). None: (0, 0).
    """
    image, orientation, ok = _try_or_flag(lambda p: _decode_stored(tf.io.read_file(p)), path)
    if annotated_hw is None:
        annotated_hw = tf.zeros([2], tf.int32)
    image = images.orient_for_annotation(image, orientation, annotated_hw, filename=path, ok=ok)
    return image, ok


def clip_and_filter_boxes(boxes: tf.Tensor, *per_box: tf.Tensor):
    """Clips normalized yxyx boxes to [0, 1] and drops those left without area.

    Args:
      boxes: float32 [N, 4] normalized yxyx (may reach outside [0, 1]).
      *per_box: tensors [N, ...] filtered alongside (labels, flags).

    Returns:
      (boxes [M, 4], *per_box filtered to [M, ...], dropped int32 [] = N - M).
    """
    boxes = tf.clip_by_value(tf.cast(boxes, tf.float32), 0.0, 1.0)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    dropped = tf.reduce_sum(tf.cast(~keep, tf.int32))
    return (
        (tf.boolean_mask(boxes, keep),)
        + tuple(tf.boolean_mask(t, keep) for t in per_box)
        + (dropped,)
    )


def _empty_like(spec):
    """A tensor matching `spec` with every unknown dimension 0 (the end-of-pass sentinel)."""
    shape = [0 if d is None else d for d in spec.shape.as_list()]
    if spec.dtype == tf.string:
        return tf.fill(shape, "")
    return tf.zeros(shape, spec.dtype)


# False inside `without_python_callbacks()`: what `finalize_examples(report=None)` does.
_REPORT_DEFAULT = [True]


@contextlib.contextmanager
def without_python_callbacks():
    """Sources built inside skip the end-of-pass warning (a tf.py_function): tf.data service
    workers in other processes run the dataset's graph and cannot call back into this one."""
    _REPORT_DEFAULT.append(False)
    try:
        yield
    finally:
        _REPORT_DEFAULT.pop()


def finalize_examples(
    dataset: tf.data.Dataset, *, skip_corrupt: bool, description: str, report: bool | None = None
) -> tf.data.Dataset:
    """Applies the corrupt-image policy, reports per-pass counts, strips internal keys.

    Args:
      dataset: examples with the internal keys `_ok` and `_dropped` (module docstring). Must be
        finite when `report` is True (a sentinel element is appended to detect the end of the
        pass).
      skip_corrupt: False: an example with `_ok == False` raises tf.errors.InvalidArgumentError
        whose message starts with "DataError:" and names the file. True: it is skipped.
      description: names the source in messages (e.g. "voc /data/VOC2007 split 'train'").
      report: append the end-of-pass sentinel and log ONE warning per pass with the number of
        skipped images and of their boxes (quoting up to 5 file names), and of boxes dropped
        in tf.data from the images kept. None: True, except inside `without_python_callbacks()`.

    Returns:
      The dataset of example dicts (EXAMPLE_KEYS only).
    """
    if report is None:
        report = _REPORT_DEFAULT[-1]
    if not skip_corrupt:

        def check(ex):
            assertion = tf.debugging.Assert(
                ex["_ok"],
                [
                    f"{DATA_ERROR_PREFIX} cannot read or decode image file",
                    ex["filename"],
                    f"of {description} (missing, unreadable or corrupt); set data.skip_corrupt=true "
                    "to skip such images",
                ],
                summarize=1,
            )
            with tf.control_dependencies([assertion]):
                return dict(ex, _ok=tf.identity(ex["_ok"]))

        dataset = dataset.map(tf.autograph.experimental.do_not_convert(check))

    def strip(ex):
        return {k: ex[k] for k in EXAMPLE_KEYS}

    if not report:
        if skip_corrupt:
            dataset = dataset.filter(lambda ex: ex["_ok"])
        return dataset.map(strip)

    sentinel = {k: _empty_like(s) for k, s in dataset.element_spec.items()}
    marked = dataset.map(lambda ex: (ex, tf.constant(False)))
    marked = marked.concatenate(tf.data.Dataset.from_tensors((sentinel, tf.constant(True))))

    def log_counts(skipped, dropped, seen, names, skipped_boxes):
        skipped, dropped, seen = int(skipped), int(dropped), int(seen)
        if skipped:
            named = [
                n.decode("utf-8", "replace")
                for n in names.numpy().tolist()[: min(skipped, _MAX_NAMED)]
            ]
            more = ", ..." if skipped > len(named) else ""
            logger.warning(
                "%s: skipped %d of %d images that could not be read or decoded, "
                "with their %d boxes (data.skip_corrupt=true): %s%s",
                description,
                skipped,
                seen,
                int(skipped_boxes),
                ", ".join(named),
                more,
            )
        if dropped:
            logger.warning(
                "%s: dropped %d boxes with no area inside their image after clipping "
                "(in %d images)",
                description,
                dropped,
                seen,
            )
        return np.int32(0)

    def step(state, element):
        skipped, dropped, seen, names, skipped_boxes = state
        ex, is_end = element
        bad = tf.logical_and(~is_end, ~ex["_ok"])
        # A skipped image's boxes (kept or "dropped" against its empty fallback image) are
        # counted with the image, not as boxes dropped after clipping.
        num_boxes = tf.size(ex["labels"], out_type=tf.int32) + ex["_dropped"]
        skipped_boxes += tf.where(bad, num_boxes, 0)
        names = tf.cond(
            bad & (skipped < _MAX_NAMED),
            lambda: tf.tensor_scatter_nd_update(
                names, [[tf.minimum(skipped, _MAX_NAMED - 1)]], [ex["filename"]]
            ),
            lambda: names,
        )
        skipped += tf.cast(bad, tf.int32)
        dropped += tf.where(is_end | bad, 0, ex["_dropped"])
        seen += tf.cast(~is_end, tf.int32)
        done = tf.cond(
            is_end,
            lambda: tf.py_function(
                log_counts, [skipped, dropped, seen, names, skipped_boxes], tf.int32
            ),
            lambda: tf.constant(0, tf.int32),
        )
        # `done` (always 0) feeds the output so the logging call cannot be pruned.
        return (skipped + done, dropped, seen, names, skipped_boxes), (ex, is_end)

    init = (
        tf.constant(0),
        tf.constant(0),
        tf.constant(0),
        tf.fill([_MAX_NAMED], ""),
        tf.constant(0),
    )
    reported = marked.scan(init, tf.autograph.experimental.do_not_convert(step))
    reported = reported.filter(lambda ex, is_end: tf.logical_and(~is_end, ex["_ok"]))
    return reported.map(lambda ex, is_end: strip(ex))


def records_dataset(
    records: dict[str, Sequence],
    *,
    shard: tuple[int, int] | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Per-image annotation records parsed in Python -> a tf.data.Dataset of small dicts.

    Args:
      records: equal-length lists; per-box entries (`boxes`, `labels`, `is_difficult`,
        `is_crowd`) are lists of arrays [N_i, ...] and become ragged rows; others are scalars.
      shard: (num_shards, index): keep every num_shards-th record starting at index (before
        any decoding, so each worker only reads its own files).
      shuffle: shuffle the whole record list (cheap: no pixels yet), reshuffled every pass.
      seed: shuffle seed.
    """
    columns = {}
    for key, values in records.items():
        if key in ("boxes", "labels", "is_difficult", "is_crowd"):
            lengths = np.array([len(v) for v in values], np.int64)
            width = (4,) if key == "boxes" else ()
            dtype = {"boxes": np.float32, "labels": np.int32}.get(key, np.bool_)
            flat = (
                np.concatenate([np.asarray(v, dtype).reshape((-1,) + width) for v in values])
                if len(values) and lengths.sum()
                else np.zeros((0,) + width, dtype)
            )
            columns[key] = tf.RaggedTensor.from_row_lengths(flat, lengths)
        else:
            columns[key] = tf.constant(np.asarray(values))
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if shard is not None:
        dataset = dataset.shard(*shard)
    if shuffle:
        size = int(dataset.cardinality())
        dataset = dataset.shuffle(max(size, 1), seed=seed, reshuffle_each_iteration=True)
    return dataset


def file_examples(
    records: dict[str, Sequence],
    *,
    description: str,
    skip_corrupt: bool,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Examples of a folder source (VOC, COCO JSON) from annotations parsed in Python.

    Image files are read and decoded inside tf.data by a parallel map; boxes are normalized by
    the DECODED image size (not the annotation's size fields), clipped to [0, 1], and boxes left
    without area are dropped and counted.

    Args:
      records: equal-length lists (one entry per image): `path` (image file), `image_id`
        (int64), `boxes` ([N_i, 4] float32 yxyx in continuous pixel coordinates of the original
        image), `labels` ([N_i] int32 0..C-1), `is_difficult`, `is_crowd` ([N_i] bool);
        optionally `size` ([2] int (height, width) the annotation records, (0, 0) unknown),
        which decides whether the EXIF orientation is applied (`read_image_or_flag`).
      description: names the source in messages.
      skip_corrupt, shuffle, seed, shard: see `finalize_examples` and `records_dataset`.
      num_parallel_calls: parallelism of the decoding map (tf.data.AUTOTUNE = -1).

    Returns:
      The examples dataset (module docstring), one pass.
    """
    dataset = records_dataset(records, shard=shard, shuffle=shuffle, seed=seed)

    def load(rec):
        annotated_hw = rec["size"] if "size" in rec else None
        image, ok = read_image_or_flag(rec["path"], annotated_hw)
        hw = tf.cast(tf.maximum(tf.shape(image)[:2], 1), tf.float32)
        scale = tf.stack([hw[0], hw[1], hw[0], hw[1]])
        boxes = tf.reshape(tf.cast(rec["boxes"], tf.float32), [-1, 4]) / scale
        boxes, labels, difficult, crowd, dropped = clip_and_filter_boxes(
            boxes, rec["labels"], rec["is_difficult"], rec["is_crowd"]
        )
        return {
            "image": image,
            "image_id": tf.cast(rec["image_id"], tf.int64),
            "filename": rec["path"],
            "boxes": boxes,
            "labels": tf.cast(labels, tf.int32),
            "is_difficult": tf.cast(difficult, tf.bool),
            "is_crowd": tf.cast(crowd, tf.bool),
            "_ok": ok,
            "_dropped": dropped,
        }

    dataset = dataset.map(
        tf.autograph.experimental.do_not_convert(load), num_parallel_calls=num_parallel_calls
    )
    return finalize_examples(dataset, skip_corrupt=skip_corrupt, description=description)


def folder_source(
    records: dict[str, Sequence],
    *,
    description: str,
    class_names: Sequence[str],
    num_examples: int,
    category_ids: Sequence[int] | None = None,
    **file_kwargs,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """(examples, DatasetInfo) of a folder source (VOC, COCO JSON) from its parsed `records`.

    Turns the per-image ``image_id`` and annotated ``size`` lists into arrays, builds the
    examples with `file_examples` (``file_kwargs``: skip_corrupt, shuffle, seed, shard,
    num_parallel_calls) and records the largest box count per image (the pipeline's static
    ground-truth padding).
    """
    records["image_id"] = np.asarray(records["image_id"], np.int64)
    records["size"] = np.asarray(records["size"], np.int32).reshape(-1, 2)
    dataset = file_examples(records, description=description, **file_kwargs)
    return dataset, DatasetInfo(
        class_names=list(class_names),
        num_examples=num_examples,
        category_ids=None if category_ids is None else list(category_ids),
        max_boxes_per_image=max(map(len, records["labels"]), default=0),
    )
