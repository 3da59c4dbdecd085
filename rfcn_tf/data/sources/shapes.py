"""`shapes`: a procedural detection dataset generated inside tf.data (no files).

Colored shapes (circle, square, triangle, ring, cross, diamond) on textured backgrounds (a flat
color plus a linear gradient, optional stripes and pixel noise). Everything is drawn by stateless
random ops seeded by (seed, stream, image index), so image i of a split is the same bytes on every
run, machine and worker, and no state is shared between parallel map calls. It is the embedded
default dataset: `python -m rfcn_tf.train` runs on a fresh machine without downloads.

Shape shorthand:
    S   image side (pixels)
    K   object slots per image (max_objects)
    T   placement candidates per slot
    N   objects actually placed

Design choices that keep it learnable (a small model reaches mAP@0.5 >= 0.9 in minutes of CPU):
    - shapes are crisp (a hard mask tested at pixel centers) in one flat color, whose brightness
      is the opposite of the background's (dark shapes on light backgrounds and vice versa) and
      whose hues are spread by the golden ratio, so neighbours differ;
    - sizes are drawn between `min_size` and `max_size` of the image side;
    - each slot tries T random placements and keeps the first whose IoU with every placed
      object is <= `max_overlap_iou` (a slot with no such placement stays empty); larger
      shapes are painted first, so a smaller shape is never hidden under a larger one;
    - every box is the tight box of the shape's mask (pixel edges: a mask covering rows
      r0..r1 gives y1 = r0 / S, y2 = (r1 + 1) / S), whatever paints over it later.

Splits: `train` is an endless stream (stream 0, index 0, 1, 2, ...); `validation` (also `val`,
`test`) is the fixed set of `num_val` images of stream 1. `image_id` is the index in the stream.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import tensorflow as tf

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources.base import DatasetInfo
from rfcn_tf.ops import boxes as box_ops

__all__ = [
    "KNOWN_SHAPES",
    "TRAIN_SPLITS",
    "VAL_SPLITS",
    "from_config",
    "generate_shapes_image",
    "info_from_config",
    "noise_tile",
    "shapes_source",
]

KNOWN_SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("validation", "val", "test")

_PLACEMENT_TRIES = 16  # T
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _shape_mask(kind: str, dy: tf.Tensor, dx: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    """Hard mask of one shape of half-size h (pixels) centered at dy = dx = 0.

    dy is [S, 1] and dx [1, S] (pixel-center offsets from the shape's center); returns [S, S]
    bool. Every shape spans exactly [-h, h] in both directions, so its box is its square.
    """
    ady, adx = tf.abs(dy), tf.abs(dx)
    d2 = dy * dy + dx * dx
    if kind == "circle":
        return d2 <= h * h
    if kind == "square":
        return (ady <= h) & (adx <= h)
    if kind == "triangle":  # apex up at dy = -h, base at dy = h, base width 2h
        return (dy <= h) & (adx <= (dy + h) / 2.0)
    if kind == "ring":
        return (d2 <= h * h) & (d2 >= (0.55 * h) ** 2)
    if kind == "cross":
        bar = 0.3 * h
        return ((ady <= h) & (adx <= bar)) | ((adx <= h) & (ady <= bar))
    if kind == "diamond":
        return ady + adx <= h
    raise DataError(f"unknown shape {kind!r}; known shapes: {', '.join(KNOWN_SHAPES)}")


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


# Background value ranges (uint8, per channel) and the texture's amplitude: light backgrounds
# stay >= 155 - 45 = 110 and dark ones <= 100 + 45 = 145, while shape colors on them are <= 102
# (value <= 0.4) and >= 191 (value >= 0.75) in their brightest channel: a shape never has a
# background color, and all sums stay inside 0..255 without clipping.
_LIGHT_BASE, _DARK_BASE = (155.0, 200.0), (55.0, 100.0)
_TEXTURE_AMPLITUDE = 45.0


def noise_tile(image_size: int, seed: int) -> tf.Tensor:
    """float32 [2S, 2S] uniform noise in [-1, 1]; each image reads a random S x S crop of it.

    Drawing per-pixel Philox noise for every image costs more than the rest of the image at
    600 px; a fixed tile, deterministic in `seed`, shifted per image, looks the same to a detector.
    """
    return tf.random.stateless_uniform(
        [2 * image_size, 2 * image_size],
        tf.constant([seed, 7919], tf.int64),
        minval=-1.0,
        maxval=1.0,
    )


def generate_shapes_image(
    seed: tf.Tensor,
    *,
    image_size: int,
    classes: Sequence[str],
    min_objects: int,
    max_objects: int,
    min_size: float,
    max_size: float,
    max_overlap_iou: float,
    noise: tf.Tensor | None = None,
):
    """Draws one image of the shapes dataset.

    Args:
      seed: int64 [2], the stateless seed of this image.
      image_size: S, pixels.
      classes: shape names (label = index), each one of KNOWN_SHAPES.
      min_objects, max_objects: inclusive range of objects attempted (K = max_objects slots).
      min_size, max_size: side of a shape as a fraction of S.
      max_overlap_iou: the largest IoU allowed between two objects' boxes.
      noise: `noise_tile(S, ...)` ([2S, 2S] float32); None draws one from seed 0.

    Returns:
      image uint8 [S, S, 3] RGB; boxes float32 [N, 4] normalized yxyx, tight on each mask;
      labels int32 [N] in 0..C-1.

    Everything works on [S, S] planes (one per channel, stacked at the end) and every shape only
    inside its box's window: TF's CPU kernels are several times slower when they broadcast
    over a trailing channel axis.
    """
    S, K, T, C = int(image_size), int(max_objects), _PLACEMENT_TRIES, len(classes)
    size_f = float(S)
    if noise is None:
        noise = noise_tile(S, 0)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=12)

    # --- background texture F [S, S] in [-A, A]: gradient + stripes + noise
    light = _uniform(seeds[0], [], 0.0, 1.0) < 0.5
    base = tf.where(
        light, _uniform(seeds[1], [3], *_LIGHT_BASE), _uniform(seeds[1], [3], *_DARK_BASE)
    )
    ys = tf.range(S, dtype=tf.float32)[:, None] + 0.5  # [S, 1] pixel centers
    xs = tf.range(S, dtype=tf.float32)[None, :] + 0.5  # [1, S]
    p = _uniform(seeds[2], [8], 0.0, 1.0)
    theta = 2.0 * math.pi * p[0]
    gradient_amp = 20.0 * p[1]
    # (y sin + x cos) / S - 0.5 lies in about [-1, 1]
    gradient = (
        ys * (gradient_amp * tf.sin(theta) / size_f)
        - gradient_amp * 0.5
        + xs * (gradient_amp * tf.cos(theta) / size_f)
    )  # [S, S]
    # Stripes sin(a y + b x) = sin(a y) cos(b x) + cos(a y) sin(b x): sines of S values only.
    phi = 2.0 * math.pi * p[2]
    freq = 2.0 * math.pi / (6.0 + 24.0 * p[3])  # period 6..30 pixels
    stripe_amp = tf.cast(p[4] < 0.5, tf.float32) * (5.0 + 10.0 * p[5])
    ay, bx = ys * (freq * tf.sin(phi)), xs * (freq * tf.cos(phi))
    stripes = (tf.sin(ay) * stripe_amp) * tf.cos(bx) + (tf.cos(ay) * stripe_amp) * tf.sin(bx)
    offset = tf.random.stateless_uniform([2], seeds[3], minval=0, maxval=S, dtype=tf.int32)
    grain = noise[offset[0] : offset[0] + S, offset[1] : offset[1] + S] * (3.0 + 9.0 * p[6])
    texture = tf.clip_by_value(gradient + stripes + grain, -_TEXTURE_AMPLITUDE, _TEXTURE_AMPLITUDE)
    # uint8 planes: (texture + A) + (base - A), both >= 0, sum <= 245.
    texture_u8 = tf.cast(texture + (_TEXTURE_AMPLITUDE + 0.5), tf.uint8)
    base_u8 = tf.cast(tf.round(base) - _TEXTURE_AMPLITUDE, tf.uint8)
    planes = [texture_u8 + base_u8[c] for c in range(3)]

    # --- placement: K slots, T candidates each, greedy first-fit under the IoU limit
    count = tf.random.stateless_uniform(
        [], seeds[5], minval=min_objects, maxval=max_objects + 1, dtype=tf.int32
    )
    sides = _uniform(seeds[6], [K, T], min_size * size_f, max_size * size_f)
    corner = _uniform(seeds[7], [K, T, 2], 0.0, 1.0) * (size_f - sides)[..., None]
    candidates = tf.concat([corner, corner + sides[..., None]], axis=-1)  # [K, T, 4] yxyx px
    kinds = tf.random.stateless_uniform([K, T], seeds[8], minval=0, maxval=C, dtype=tf.int32)
    placed = tf.fill([K, 4], -1.0)  # rows without area never overlap anything
    slot_valid, slot_kind, slot_side = [], [], []
    for k in range(K):
        overlap = tf.reduce_max(box_ops.iou(candidates[k], placed), axis=1)  # [T]
        fits = overlap <= max_overlap_iou
        first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
        valid = tf.reduce_any(fits) & (k < count)
        box = tf.where(valid, candidates[k, first], -tf.ones([4]))
        placed = tf.tensor_scatter_nd_update(placed, [[k]], box[None])
        slot_valid.append(valid)
        slot_kind.append(kinds[k, first])
        slot_side.append(sides[k, first])
    slot_valid = tf.stack(slot_valid)
    slot_kind = tf.stack(slot_kind)
    slot_side = tf.stack(slot_side)

    # --- colors: brightness opposite to the background, hues spread by the golden ratio
    hue = tf.math.floormod(
        _uniform(seeds[9], [], 0.0, 1.0) + _GOLDEN * tf.range(K, dtype=tf.float32), 1.0
    )
    sat = _uniform(seeds[10], [K], 0.6, 1.0)
    val = tf.where(light, _uniform(seeds[11], [K], 0.1, 0.4), _uniform(seeds[11], [K], 0.75, 1.0))
    colors = tf.image.hsv_to_rgb(tf.stack([hue, sat, val], axis=-1))  # [K, 3] in [0, 1]
    colors = tf.cast(tf.round(colors * 255.0), tf.uint8)

    # --- rasterize, largest first, each mask only inside its box's pixel window; boxes are the
    # tight boxes of the masks.
    order = tf.argsort(tf.where(slot_valid, slot_side, -1.0), direction="DESCENDING")
    boxes, labels, keep = [], [], []
    no = tf.zeros([1], tf.bool)
    for j in range(K):
        k = order[j]
        box = placed[k]
        r0 = tf.clip_by_value(tf.cast(tf.floor(box[0]), tf.int32), 0, S)
        c0 = tf.clip_by_value(tf.cast(tf.floor(box[1]), tf.int32), 0, S)
        r1 = tf.clip_by_value(tf.cast(tf.math.ceil(box[2]), tf.int32), r0, S)
        c1 = tf.clip_by_value(tf.cast(tf.math.ceil(box[3]), tf.int32), c0, S)
        cy, cx = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        dy = tf.cast(tf.range(r0, r1), tf.float32)[:, None] + 0.5 - cy  # [h, 1]
        dx = tf.cast(tf.range(c0, c1), tf.float32)[None, :] + 0.5 - cx  # [1, w]
        half = slot_side[k] / 2.0
        # switch_case calls a branch in this iteration, so the closures see this slot's values
        branches = [lambda kind=kind: _shape_mask(kind, dy, dx, half) for kind in classes]  # noqa: B023
        mask = tf.switch_case(slot_kind[k], branches) & slot_valid[k]  # [h, w]
        rows = tf.reduce_any(mask, axis=1)
        cols = tf.reduce_any(mask, axis=0)
        # A False sentinel keeps argmax defined on empty windows.
        first_row = tf.argmax(tf.cast(tf.concat([rows, no], 0), tf.int32), output_type=tf.int32)
        last_row = tf.argmax(
            tf.cast(tf.concat([rows[::-1], no], 0), tf.int32), output_type=tf.int32
        )
        first_col = tf.argmax(tf.cast(tf.concat([cols, no], 0), tf.int32), output_type=tf.int32)
        last_col = tf.argmax(
            tf.cast(tf.concat([cols[::-1], no], 0), tf.int32), output_type=tf.int32
        )
        tight = tf.stack([r0 + first_row, c0 + first_col, r1 - last_row, c1 - last_col])
        boxes.append(tf.cast(tight, tf.float32) / size_f)
        labels.append(slot_kind[k])
        keep.append(tf.reduce_any(rows))
        begin, end = tf.stack([r0, c0]), tf.stack([r1, c1])
        for c in range(3):
            window = tf.where(mask, colors[k, c], planes[c][r0:r1, c0:c1])
            planes[c] = tf.raw_ops.TensorStridedSliceUpdate(
                input=planes[c], begin=begin, end=end, strides=[1, 1], value=window
            )
    keep = tf.stack(keep)
    boxes = tf.boolean_mask(tf.stack(boxes), keep)
    labels = tf.boolean_mask(tf.stack(labels), keep)
    image = _interleave_rgb(planes, S)
    return image, boxes, labels


def _interleave_rgb(planes, size: int) -> tf.Tensor:
    """Three uint8 [S, S] planes -> uint8 [S, S, 3].

    The planes are packed into the bytes of one int32 per pixel and bitcast to 4 bytes: about
    3x faster than tf.stack(axis=-1) on this CPU, and unlike a uint8 transpose it does not make
    oneDNN log an error line. The byte order of the bitcast follows the machine's.
    """
    # Memory order of the 4 bytes of each word must read (r, g, b, 0).
    shifts = (0, 8, 16) if sys.byteorder == "little" else (24, 16, 8)
    words = tf.zeros([size, size], tf.int32)
    for plane, shift in zip(planes, shifts):
        words = tf.bitwise.bitwise_or(words, tf.bitwise.left_shift(tf.cast(plane, tf.int32), shift))
    return tf.reshape(tf.bitcast(words, tf.uint8), [size, size, 4])[..., :3]


def _check(
    *, image_size, classes, min_objects, max_objects, min_size, max_size, max_overlap_iou, num_val
):
    if not classes:
        raise DataError("data.shapes.classes is empty")
    unknown = [c for c in classes if c not in KNOWN_SHAPES]
    if unknown:
        raise DataError(
            f"data.shapes.classes has unknown shapes {unknown}; known shapes: "
            f"{', '.join(KNOWN_SHAPES)}"
        )
    if len(set(classes)) != len(classes):
        raise DataError(f"data.shapes.classes repeats a shape: {list(classes)}")
    if image_size < 16:
        raise DataError(f"data.shapes.image_size must be >= 16 pixels, got {image_size}")
    if not 0 <= min_objects <= max_objects or max_objects < 1:
        raise DataError(
            "data.shapes needs 0 <= min_objects <= max_objects and max_objects >= 1, "
            f"got {min_objects} and {max_objects}"
        )
    if not 0.0 < min_size <= max_size <= 1.0:
        raise DataError(
            "data.shapes needs 0 < min_size <= max_size <= 1 (fractions of the image "
            f"side), got {min_size} and {max_size}"
        )
    if min_size * image_size < 2.0:
        raise DataError(
            f"data.shapes.min_size={min_size} gives shapes under 2 pixels at "
            f"image_size={image_size}"
        )
    if not 0.0 <= max_overlap_iou <= 1.0:
        raise DataError(f"data.shapes.max_overlap_iou must be in [0, 1], got {max_overlap_iou}")
    if num_val < 1:
        raise DataError(f"data.shapes.num_val must be >= 1, got {num_val}")


def _stream_of(split: str, num_val: int) -> tuple[int, int | None]:
    """(stream, images in one pass) of a split name: train is stream 0 (endless, None),
    validation / val / test stream 1 (`num_val`)."""
    if split in TRAIN_SPLITS:
        return 0, None
    if split in VAL_SPLITS:
        return 1, num_val
    raise DataError(
        f"shapes has no split {split!r}; splits: {', '.join(TRAIN_SPLITS + VAL_SPLITS)}"
    )


def shapes_source(
    *,
    split: str,
    image_size: int = 256,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    num_val: int = 200,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size: float = 0.12,
    max_size: float = 0.5,
    max_overlap_iou: float = 0.3,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
):
    """The shapes dataset of one split.

    Args:
      split: `train` (endless) or `validation` / `val` / `test` (the fixed `num_val` images).
      image_size, classes, min_objects, max_objects, min_size, max_size, max_overlap_iou: see
        `generate_shapes_image` (sizes are fractions of the image side).
      num_val: images in the validation split.
      seed: dataset seed; image i of stream s is drawn from fold_in((seed, s), i).
      shard: (num_shards, index): this worker's indices (index, index + num_shards, ...).
      num_parallel_calls: drawing parallelism.

    Returns:
      (examples dataset, DatasetInfo); num_examples is None for the endless train stream.

    Raises:
      DataError: an unknown split or shape name, inconsistent sizes or counts.
    """
    classes = list(classes)
    _check(
        image_size=image_size,
        classes=classes,
        min_objects=min_objects,
        max_objects=max_objects,
        min_size=min_size,
        max_size=max_size,
        max_overlap_iou=max_overlap_iou,
        num_val=num_val,
    )
    stream, num_examples = _stream_of(split, num_val)
    indices = tf.data.Dataset.counter() if stream == 0 else tf.data.Dataset.range(num_val)
    if shard is not None:
        indices = indices.shard(*shard)
    stream_key = tf.constant([seed, stream], tf.int64)
    noise = noise_tile(image_size, seed)
    split_name = "train" if stream == 0 else "validation"

    def draw(index):
        index = tf.cast(index, tf.int64)
        image_seed = tf.random.experimental.stateless_fold_in(stream_key, index)
        image, boxes, labels = generate_shapes_image(
            image_seed,
            image_size=image_size,
            classes=classes,
            min_objects=min_objects,
            max_objects=max_objects,
            min_size=min_size,
            max_size=max_size,
            max_overlap_iou=max_overlap_iou,
            noise=noise,
        )
        n = tf.shape(labels)[0]
        return {
            "image": image,
            "image_id": index,
            "filename": tf.strings.join([f"shapes/{split_name}/", tf.strings.as_string(index)]),
            "boxes": boxes,
            "labels": labels,
            "is_difficult": tf.zeros([n], tf.bool),
            "is_crowd": tf.zeros([n], tf.bool),
        }

    dataset = indices.map(
        tf.autograph.experimental.do_not_convert(draw), num_parallel_calls=num_parallel_calls
    )
    return dataset, DatasetInfo(class_names=classes, num_examples=num_examples)


def _generator_settings(data_cfg) -> dict:
    """`data.shapes` as the keyword arguments `shapes_source` and `_check` share (the drawing
    settings and `num_val`), after checking `data.class_names` (unset or equal to the shapes)."""
    cfg = data_cfg.shapes
    if data_cfg.class_names and list(data_cfg.class_names) != list(cfg.classes):
        raise DataError(
            f"data.class_names {data_cfg.class_names} differ from data.shapes.classes "
            f"{cfg.classes}; the shapes source names its classes by "
            "data.shapes.classes (leave data.class_names null)"
        )
    return {
        "image_size": cfg.image_size,
        "classes": list(cfg.classes),
        "num_val": cfg.num_val,
        "min_objects": cfg.min_objects,
        "max_objects": cfg.max_objects,
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "max_overlap_iou": cfg.max_overlap_iou,
    }


def info_from_config(data_cfg, *, split: str) -> DatasetInfo:
    """The `DatasetInfo` that `from_config` returns, and the same errors, without building
    the tf.data pipeline (whose drawing graph takes about a second to trace)."""
    settings = _generator_settings(data_cfg)
    _check(**settings)
    _, num_examples = _stream_of(split, settings["num_val"])
    return DatasetInfo(class_names=settings["classes"], num_examples=num_examples)


def from_config(
    data_cfg,
    *,
    split: str,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
):
    """`shapes_source` with its arguments read from a `DataConfig` (`data.shapes.*`).

    `shuffle` and `seed` are accepted for the common source signature and unused: the stream is
    random by construction, and its seed is `data.shapes.seed`.
    """
    del shuffle, seed
    return shapes_source(
        split=split,
        **_generator_settings(data_cfg),
        seed=data_cfg.shapes.seed,
        shard=shard,
        num_parallel_calls=data_cfg.num_parallel_calls,
    )
