"""tf.data input pipelines: source -> (cache) -> shuffle/repeat -> transform -> pad -> batch.

Shape shorthand:
    B       images per batch (per replica when an input context is given)
    Hp, Wp  padded image height and width: the batch's largest resized image, rounded up to
            a multiple of 16
    G       padded ground-truth rows: data.max_boxes, raised to the largest box count of one
            image when the source reports it (static); for sources that cannot tell up front
            (TFDS) the batch's largest count when that is more (dynamic). No box is ever dropped
            for lack of rows, in training or evaluation, so the metrics see every box.

Batched features (docs/INTERFACES.md, "Batched features"):
    images           uint8   [B, Hp, Wp, 3]  resized, zero-padded bottom/right
    image_shapes     int32   [B, 2]          (height, width) after resizing, before padding
    original_shapes  int32   [B, 2]          (height, width) of the source image
    image_ids        int64   [B]
    gt_boxes         float32 [B, G, 4]       yxyx pixels of the resized image; padding rows -1
    gt_classes       int32   [B, G]          1..C (label + 1; 0 is background); padding -1
    gt_mask          bool    [B, G]          True for real boxes
    gt_difficult     bool    [B, G]
    gt_is_crowd      bool    [B, G]

Training vs evaluation:
    - training: the finite sources repeat forever, the file list is reshuffled every pass
      (before decoding), each image gets a random shorter side from `data.scales` (R-FCN
      sec. 4.1 multi-scale training), a random horizontal flip (`data.random_flip`) and optional
      photometric jitter (`data.photometric`); VOC difficult boxes are dropped unless
      `data.use_difficult` and COCO crowd boxes are always dropped from the targets (Model
      Garden's `skip_crowd_during_training`); `data.drop_empty` drops images left without a box;
      the last incomplete batch is dropped (static B). With more than one image per replica
      batch, images are batched within their height/width group (`data.aspect_grouping`,
      `data.aspect_ratio_boundaries`: landscape | portrait by default), so little is padded.
    - geometric augmentation (rfcn_tf/data/augment.py, each off by default): `data.random_crop`
      (IoU-constrained, before resizing; boxes keeping < `data.crop_min_visible` of their area
      are dropped), `data.scale_jitter` (a factor on the chosen shorter side),
      `data.vertical_flip` and `data.rot90` (after the horizontal flip).
    - `data.service: grpc://host:port` runs the training pipeline on tf.data service workers
      (rfcn_tf/data/service.py); the trainers then receive distinct batches without sharding.
    - evaluation: one pass in source order; every image kept (negatives count as false
      positives) with difficult and crowd boxes flagged, not dropped; the shorter side is the
      median of `data.scales` (the lower middle for an even count: 600 for R-FCN's
      {400, 500, 600, 700, 800}); the last batch may be smaller.
    - Augmentation randomness is stateless, seeded by (data.seed, element index, worker), so
      with `data.deterministic` two runs give the same bytes.
"""

from __future__ import annotations

import contextlib
import math

import tensorflow as tf

from rfcn_tf.data import augment, transforms
from rfcn_tf.data import service as service_lib
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources import SOURCE_INFOS, get_source
from rfcn_tf.data.sources.base import DatasetInfo, logger, without_python_callbacks
from rfcn_tf.ops import boxes as box_ops

__all__ = [
    "FEATURE_KEYS",
    "aspect_group",
    "build_dataset",
    "build_source",
    "evaluation_scale",
    "group_by_aspect_ratio",
    "source_info",
    "steps_per_epoch",
]

FEATURE_KEYS = (
    "images",
    "image_shapes",
    "original_shapes",
    "image_ids",
    "gt_boxes",
    "gt_classes",
    "gt_mask",
    "gt_difficult",
    "gt_is_crowd",
)

# Every image in a batch is padded to a multiple of the backbone's stride.
_PAD_MULTIPLE = 16


def evaluation_scale(scales) -> int:
    """The shorter side used at evaluation: the (lower) median of the training scales."""
    ordered = sorted(int(s) for s in scales)
    if not ordered:
        raise DataError("data.scales is empty: list at least one shorter-side size")
    return ordered[(len(ordered) - 1) // 2]


def build_source(
    data_cfg,
    *,
    split: str,
    shuffle: bool = False,
    seed: int | None = None,
    shard: tuple[int, int] | None = None,
):
    """The examples of one split, before any transform (docs/INTERFACES.md, "Examples").

    Args:
      data_cfg: a `DataConfig` (`data.source` picks the source).
      split: split name (`data.train_split`, `data.val_split`, or any the source has).
      shuffle: reshuffle the file list every pass (training).
      seed: shuffle seed; None uses `data.seed`.
      shard: (num_shards, index): this worker's share, taken before decoding.

    Returns:
      (dataset of example dicts, DatasetInfo). One pass, except the shapes train stream, which
      is endless.

    Raises:
      DataError: see the sources (missing files, unknown classes, unknown source or split).
    """
    if shard is not None:
        num, index = shard
        if not 0 <= index < num:
            raise DataError(f"shard index must be in [0, {num}), got {index}")
    builder = get_source(data_cfg.source)
    return builder(
        data_cfg,
        split=split,
        shuffle=shuffle,
        seed=data_cfg.seed if seed is None else seed,
        shard=shard,
    )


def source_info(data_cfg, *, split: str) -> DatasetInfo:
    """The `DatasetInfo` of one split (class names, image count), as `build_source` returns it
    and with the same errors, for callers that need nothing else: without building the tf.data
    pipeline where the source knows its facts up front (`SOURCE_INFOS`: shapes), else through
    `build_source`."""
    info_fn = SOURCE_INFOS.get(data_cfg.source)
    if info_fn is None:
        return build_source(data_cfg, split=split)[1]
    return info_fn(data_cfg, split=split)


def _training_keep(ex, use_difficult: bool) -> tf.Tensor:
    """bool [N]: boxes that become training targets (no crowd; no difficult unless asked)."""
    keep = ~ex["is_crowd"]
    if not use_difficult:
        keep &= ~ex["is_difficult"]
    return keep


def build_dataset(
    data_cfg,
    *,
    split: str,
    training: bool,
    batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The batched features the model, training and evaluation consume (module docstring).

    Args:
      data_cfg: a `DataConfig`.
      split: split name.
      training: True: augmented, shuffled, endless, full batches. False: one plain pass in
        the split's order (deterministic, whatever `data.deterministic` says).
      batch_size: the GLOBAL batch size (images per step over all replicas); with an
        `input_context` each pipeline batches `input_context.get_per_replica_batch_size(
        batch_size)`.
      input_context: from `strategy.distribute_datasets_from_function`: the pipeline reads only
        its shard (`input_pipeline_id` of `num_input_pipelines`), taken before decoding.

    Returns:
      tf.data.Dataset of feature dicts (FEATURE_KEYS).

    Raises:
      DataError: an invalid batch size or split, and everything `build_source` raises.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    shard, pipeline_id, num_pipelines = None, 0, 1
    per_replica = batch_size
    # tf.data service (rfcn_tf/data/service.py): the workers split the source among them and
    # each batch reaches one trainer, so the trainers do not shard.
    service = data_cfg.service if training else None
    if input_context is not None:
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        if input_context.num_input_pipelines > 1 and not service:
            num_pipelines = input_context.num_input_pipelines
            pipeline_id = input_context.input_pipeline_id
            shard = (num_pipelines, pipeline_id)
    scales = [int(s) for s in data_cfg.scales]
    if not scales or min(scales) < 1:
        raise DataError(f"data.scales must list positive shorter-side sizes, got {scales}")
    if data_cfg.max_boxes < 1:
        raise DataError(f"data.max_boxes must be >= 1, got {data_cfg.max_boxes}")

    use_cache = bool(data_cfg.cache)
    if service:
        service_lib.parse_address(service)  # a bad address fails before any work
    with without_python_callbacks() if service else contextlib.nullcontext():
        dataset, info = build_source(
            data_cfg,
            split=split,
            shuffle=training and not use_cache,
            seed=data_cfg.seed,
            shard=shard,
        )
    max_boxes, fixed_rows = _ground_truth_rows(data_cfg, info, split)
    endless = int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY
    if use_cache and endless:
        logger.warning(
            "data.cache ignored: split %r of source %r is an endless stream", split, data_cfg.source
        )
        use_cache = False
    if use_cache:
        dataset = dataset.cache()
    if training:
        if use_cache:
            dataset = dataset.shuffle(
                data_cfg.shuffle_buffer, seed=data_cfg.seed, reshuffle_each_iteration=True
            )
        if not endless:
            dataset = dataset.repeat()
        if data_cfg.drop_empty:
            dataset = dataset.filter(
                lambda ex: tf.reduce_any(_training_keep(ex, data_cfg.use_difficult))
            )

    prepare = _make_prepare(
        training=training,
        scales=scales,
        eval_scale=evaluation_scale(scales),
        max_size=int(data_cfg.max_size),
        max_boxes=max_boxes,
        fixed_rows=fixed_rows,
        random_flip=bool(data_cfg.random_flip),
        photometric=bool(data_cfg.photometric),
        use_difficult=bool(data_cfg.use_difficult),
        seed=int(data_cfg.seed),
        pipeline_id=pipeline_id,
        num_pipelines=num_pipelines,
        geometric=_geometric_options(data_cfg),
    )
    dataset = dataset.enumerate().map(
        tf.autograph.experimental.do_not_convert(prepare),
        num_parallel_calls=data_cfg.num_parallel_calls,
    )
    padding = _padding_values(dataset.element_spec)
    grouping = data_cfg.aspect_grouping
    if grouping is None:
        grouping = per_replica > 1
    if training and grouping:
        dataset = group_by_aspect_ratio(
            dataset, per_replica, data_cfg.aspect_ratio_boundaries, padding_values=padding
        )
    else:
        dataset = dataset.padded_batch(per_replica, drop_remainder=training, padding_values=padding)
    dataset = dataset.map(
        lambda f: dict(f, images=transforms.pad_to_multiple(f["images"], _PAD_MULTIPLE)),
        num_parallel_calls=data_cfg.num_parallel_calls,
    )
    if service:
        dataset = service_lib.distribute(
            dataset,
            address=service,
            job=service_lib.job_name(data_cfg, split=split, per_replica_batch=per_replica),
        )
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # An evaluation pass keeps the split's order whatever data.deterministic says: otherwise
    # the parallel map hands out images as they finish, and `evaluate --max-images N`, the
    # validation during training and the int8 accuracy report would each score a different
    # "first N" from run to run. Training may trade order for throughput unless asked.
    options.deterministic = bool(data_cfg.deterministic) or not training
    return dataset.with_options(options)


def aspect_group(image_shapes: tf.Tensor, boundaries) -> tf.Tensor:
    """int64 []: the group of an image of (height, width) `image_shapes` among the height/width
    ratio intervals the sorted `boundaries` cut: 0 below boundaries[0], ..., len(boundaries)
    at or above the last (with [1.0]: 0 landscape, 1 square or portrait)."""
    hw = tf.cast(image_shapes, tf.float32)
    ratio = hw[0] / tf.maximum(hw[1], 1.0)
    edges = tf.constant(sorted(float(b) for b in boundaries), tf.float32)
    return tf.reduce_sum(tf.cast(ratio >= edges, tf.int64))


def group_by_aspect_ratio(
    dataset: tf.data.Dataset, batch_size: int, boundaries, *, padding_values
) -> tf.data.Dataset:
    """Full batches of images from ONE height/width group each (less padding per batch).

    As Deformable-ConvNets' ASPECT_GROUPING and detectron2's AspectRatioGroupedDataset: each
    group collects images until it has `batch_size`, then emits them as one padded batch, so a
    landscape and a portrait image are never padded to their common bounding box. Training
    only (an endless stream; a group's incomplete batch is dropped at the end of a finite one).

    Args:
      dataset: unbatched features with `image_shapes` (int32 [2], after resizing).
      batch_size: images per batch (per replica).
      boundaries: height/width ratios between the groups (`aspect_group`).
      padding_values: `padded_batch` padding values for the feature dict.
    """
    boundaries = [float(b) for b in boundaries]
    if any(not b > 0 for b in boundaries):
        raise DataError(
            f"data.aspect_ratio_boundaries must be positive height/width ratios, got {boundaries}"
        )
    return dataset.group_by_window(
        key_func=lambda f: aspect_group(f["image_shapes"], boundaries),
        reduce_func=lambda _, window: window.padded_batch(
            batch_size, drop_remainder=True, padding_values=padding_values
        ),
        window_size=batch_size,
    )


def _ground_truth_rows(data_cfg, info: DatasetInfo, split: str) -> tuple[int, bool]:
    """(G, fixed): ground-truth rows per image, and whether G bounds every image (static)."""
    known = info.max_boxes_per_image
    if known is None and data_cfg.source == "shapes":
        known = int(data_cfg.shapes.max_objects)
    rows = int(data_cfg.max_boxes)
    if known is None:
        return rows, False
    if known > rows:
        logger.info(
            "split %r has up to %d boxes per image: ground truth padded to %d rows "
            "(data.max_boxes=%d), so none is dropped",
            split,
            known,
            known,
            rows,
        )
    return max(rows, int(known)), True


def _padding_values(spec) -> dict:
    """Batch padding like `pad_ground_truth`'s: -1 boxes and classes, 0 pixels, False flags."""
    return {
        key: tf.constant(-1 if key in ("gt_boxes", "gt_classes") else 0, s.dtype)
        if s.dtype != tf.bool
        else tf.constant(False)
        for key, s in spec.items()
    }


def _fold(seed, salt: int):
    """A stateless seed [2] derived from `seed` and `salt` (independent streams)."""
    return tf.random.experimental.stateless_fold_in(seed, salt)


def _geometric_options(data_cfg) -> dict:
    """The `rfcn_tf.data.augment` options of `data_cfg` (training only), checked."""
    jitter = data_cfg.scale_jitter
    if jitter is not None:
        if len(jitter) != 2 or not 0 < float(jitter[0]) <= float(jitter[1]):
            raise DataError(
                f"data.scale_jitter must be [low, high] with 0 < low <= high, got {jitter}"
            )
        jitter = (float(jitter[0]), float(jitter[1]))
    if not 0.0 < float(data_cfg.crop_min_visible) <= 1.0:
        raise DataError(f"data.crop_min_visible must be in (0, 1], got {data_cfg.crop_min_visible}")
    return {
        "scale_jitter": jitter,
        "random_crop": bool(data_cfg.random_crop),
        "crop_min_visible": float(data_cfg.crop_min_visible),
        "vertical_flip": bool(data_cfg.vertical_flip),
        "rot90": bool(data_cfg.rot90),
    }


def _make_prepare(
    *,
    training,
    scales,
    eval_scale,
    max_size,
    max_boxes,
    fixed_rows,
    random_flip,
    photometric,
    use_difficult,
    seed,
    pipeline_id,
    num_pipelines,
    geometric=None,
):
    """The per-image map: example dict -> unbatched features (module docstring).

    `geometric` (training only): `_geometric_options`; each augmentation draws from its own
    seed, folded from the element's seed, so turning one on leaves the others' draws as they
    were.
    """
    geometric = geometric or {}

    def prepare(index, ex):
        # Stateless seed of this element: (data.seed, global element index over workers).
        element = tf.cast(index, tf.int64) * num_pipelines + pipeline_id
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), element]), num=3
        )
        image = ex["image"]
        original_shape = tf.shape(image)[:2]
        boxes, labels = ex["boxes"], ex["labels"]
        difficult, crowd = ex["is_difficult"], ex["is_crowd"]
        if training:
            keep = _training_keep(ex, use_difficult)
            boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
            difficult, crowd = tf.boolean_mask(difficult, keep), tf.boolean_mask(crowd, keep)
            if geometric.get("random_crop"):
                image, boxes, labels, difficult, crowd = augment.random_crop(
                    image,
                    boxes,
                    labels,
                    difficult,
                    crowd,
                    seed=_fold(seeds[0], 1),
                    min_visible=geometric["crop_min_visible"],
                )
            min_size = (
                transforms.choose_scale(scales, seed=seeds[0]) if len(scales) > 1 else scales[0]
            )
            if geometric.get("scale_jitter"):
                low, high = geometric["scale_jitter"]
                min_size = augment.jitter_scale(
                    min_size, seed=_fold(seeds[0], 2), low=low, high=high
                )
        else:
            min_size = eval_scale
        image, _ = transforms.resize_image_if_needed(image, min_size=min_size, max_size=max_size)
        if training and random_flip:
            image, boxes, _ = transforms.random_horizontal_flip(image, boxes, seed=seeds[1])
        if training and geometric.get("vertical_flip"):
            image, boxes, _ = augment.random_vertical_flip(image, boxes, seed=_fold(seeds[0], 3))
        if training and geometric.get("rot90"):
            image, boxes, _ = augment.random_rot90(image, boxes, seed=_fold(seeds[0], 4))
        if training and photometric:
            image = transforms.photometric_jitter(image, seed=seeds[2])
        image_shape = tf.shape(image)[:2]
        boxes_px = box_ops.denormalize_boxes(boxes, image_shape)
        gt = transforms.pad_ground_truth(
            max_boxes,
            fixed_rows,
            boxes=boxes_px,
            classes=labels + 1,
            difficult=difficult,
            is_crowd=crowd,
        )
        return {
            "images": image,
            "image_shapes": tf.cast(image_shape, tf.int32),
            "original_shapes": tf.cast(original_shape, tf.int32),
            "image_ids": ex["image_id"],
            "gt_boxes": tf.cast(gt["boxes"], tf.float32),
            "gt_classes": tf.cast(gt["classes"], tf.int32),
            "gt_mask": gt["mask"],
            "gt_difficult": gt["difficult"],
            "gt_is_crowd": gt["is_crowd"],
        }

    return prepare


def steps_per_epoch(info: DatasetInfo, batch_size: int) -> int | None:
    """Batches in one pass of a finite split (None for an endless stream)."""
    if info.num_examples is None:
        return None
    return math.ceil(info.num_examples / batch_size)
