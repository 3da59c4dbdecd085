"""A tiny detector stand-in and deterministic data for the engine tests.

The stand-in has what the engine needs from ``RFCN``: the three parts ``backbone``,
``rpn_head``, ``rfcn_head``; ``compute_losses(features, *, training, include)`` returning the
fixed loss names; ``propose(features, training=False)`` for the alternating scheme's fixed
proposals; ``detect(images, image_shapes)``. Its losses are per-image means (like the real
model's fixed-count samplers), so N replicas with B/N images step exactly like one device.

Shape shorthand: B batch, S image side (pixels), s = S / 2 feature side, C classes, G boxes.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "rfcn_class_loss", "rfcn_box_loss")
IMAGE_SIZE = 32
MAX_BOXES = 3


class TinyDetector(keras.Model):
    """backbone: 3x3/2 conv (+BatchNorm if ``batch_norm``) -> [B, s, s, 8]; rpn_head: 1x1 conv
    -> objectness logits [B, s, s, 1]; rfcn_head: 1x1 conv -> class logits [B, s, s, C+1].

    Losses: per-pixel "is inside a box" (sigmoid CE) for the RPN and "class of the box covering
    the pixel" (softmax CE) for R-FCN, weighted by the proposals' objectness (a constant) when
    ``features["proposals"]`` is given, else by the model's own (stop-gradient) objectness.
    """

    def __init__(
        self,
        num_classes: int = 2,
        *,
        batch_norm: bool = False,
        seed: int = 0,
        nan_at_call: int | None = None,
    ):
        super().__init__(name="tiny_detector")
        init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)
        layers = [
            keras.layers.Conv2D(
                8, 3, strides=2, padding="same", kernel_initializer=init(0), name="conv"
            )
        ]
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name="bn"))
        layers.append(keras.layers.Activation("relu"))
        self.backbone = keras.Sequential(layers, name="backbone")
        self.rpn_head = keras.layers.Conv2D(1, 1, kernel_initializer=init(1), name="rpn")
        self.rfcn_head = keras.layers.Conv2D(
            num_classes + 1, 1, kernel_initializer=init(2), name="rfcn"
        )
        self.num_classes = num_classes
        # Test hook: a tf counter of compute_losses calls; the loss is NaN on call nan_at_call.
        self.nan_at_call = nan_at_call
        self.calls = tf.Variable(0, trainable=False, dtype=tf.int64, name="calls")
        self.build_all()

    def build_all(self):
        self.call({"images": tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)})

    def call(self, inputs, training=False):
        x = tf.cast(inputs["images"], tf.float32) / 127.5 - 1.0
        features = self.backbone(x, training=training)
        return {
            "objectness_logits": self.rpn_head(features),
            "class_logits": self.rfcn_head(features),
        }

    def propose(self, features, training=False, proposal_counts=None):
        """RFCN.propose's contract: a proposals map per image and a count (all of it)."""
        objectness = tf.sigmoid(self.call(features, training=training)["objectness_logits"])
        count = tf.reduce_prod(tf.shape(objectness)[1:3])
        return {"proposals": objectness, "num_proposals": tf.fill(tf.shape(objectness)[:1], count)}

    @staticmethod
    def targets(features, side):
        """inside [B, s, s] float (1 inside any box), classes [B, s, s] int (0 = background)."""
        centers = (tf.range(side, dtype=tf.float32) + 0.5) * (IMAGE_SIZE / side)
        cy = centers[None, :, None, None]
        cx = centers[None, None, :, None]
        boxes = features["gt_boxes"][:, None, None, :, :]  # [B, 1, 1, G, 4]
        inside = (
            (cy >= boxes[..., 0])
            & (cy <= boxes[..., 2])
            & (cx >= boxes[..., 1])
            & (cx <= boxes[..., 3])
            & features["gt_mask"][:, None, None, :]
        )  # [B,s,s,G]
        classes = tf.where(inside, features["gt_classes"][:, None, None, :], 0)
        return tf.cast(tf.reduce_any(inside, -1), tf.float32), tf.reduce_max(classes, -1)

    def compute_losses(self, features, *, training=True, include=("rpn", "rfcn")):
        out = self.call(features, training=training)
        side = out["objectness_logits"].shape[1]
        inside, classes = self.targets(features, side)
        zero = tf.zeros([], tf.float32)
        losses = dict.fromkeys(LOSS_NAMES, zero)
        if "rpn" in include:
            ce = tf.nn.sigmoid_cross_entropy_with_logits(inside, out["objectness_logits"][..., 0])
            losses["rpn_objectness_loss"] = tf.reduce_mean(tf.reduce_mean(ce, [1, 2]))
        if "rfcn" in include:
            if "proposals" in features:
                weight = features["proposals"][..., 0]
            else:  # approximate joint training: proposals are constants
                weight = tf.stop_gradient(tf.sigmoid(out["objectness_logits"][..., 0]))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(classes, out["class_logits"])
            losses["rfcn_class_loss"] = tf.reduce_mean(tf.reduce_mean((0.5 + weight) * ce, [1, 2]))
        total = tf.add_n(list(losses.values()))
        if self.nan_at_call is not None:
            count = self.calls.assign_add(1)
            total = tf.where(count == self.nan_at_call, tf.constant(np.nan, tf.float32), total)
        losses["total_loss"] = total
        return losses

    def detect(self, images, image_shapes):
        out = self.call({"images": images})
        batch = tf.shape(images)[0]
        score = tf.reduce_max(tf.sigmoid(out["objectness_logits"]), [1, 2, 3])
        box = tf.constant([[4.0, 4.0, 20.0, 24.0]])
        return {
            "detection_boxes": tf.tile(box[None], [batch, 1, 1]),
            "detection_scores": score[:, None],
            "detection_classes": tf.ones([batch, 1], tf.int32),
            "num_detections": tf.ones([batch], tf.int32),
        }


def examples(count: int = 8, seed: int = 0) -> list[dict]:
    """``count`` fixed examples: uint8 images with 1..3 bright rectangles and their boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        boxes = np.full((MAX_BOXES, 4), -1.0, np.float32)
        classes = np.full((MAX_BOXES,), -1, np.int32)
        n = int(rng.integers(1, MAX_BOXES + 1))
        for j in range(n):
            y1, x1 = rng.integers(0, IMAGE_SIZE - 12, size=2)
            h, w = rng.integers(8, 13, size=2)
            c = int(rng.integers(1, 3))
            image[y1 : y1 + h, x1 : x1 + w] = 120 * c
            boxes[j] = (y1, x1, y1 + h, x1 + w)
            classes[j] = c
        out.append(
            {
                "images": image,
                "image_shapes": np.array([IMAGE_SIZE, IMAGE_SIZE], np.int32),
                "gt_boxes": boxes,
                "gt_classes": classes,
                "gt_mask": classes > 0,
            }
        )
    return out


def dataset_fn(global_batch_size: int, count: int = 8, seed: int = 0):
    """``input_context -> tf.data.Dataset`` of per-replica batches, repeated in a fixed order.

    Worker ``i`` of ``n`` input pipelines reads examples ``i, i + n, ...``; within a pipeline,
    consecutive per-replica batches go to replicas 0, 1, ... So one device with batch B and N
    replicas with B/N read the same images at every step.
    """
    data = examples(count, seed)
    return replica_dataset_fn(
        {k: np.stack([e[k] for e in data]) for k in data[0]}, global_batch_size
    )


def replica_dataset_fn(stacked: dict, global_batch_size: int):
    """``input_context -> tf.data.Dataset`` over the rows of ``stacked`` (features
    ``[count, ...]``), repeated, sharded by input pipeline and batched per replica (the rule
    ``dataset_fn`` documents); without a context, batches of ``global_batch_size``."""

    def fn(context: tf.distribute.InputContext | None = None):
        ds = tf.data.Dataset.from_tensor_slices(stacked).repeat()
        batch = global_batch_size
        if context is not None:
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
            batch = context.get_per_replica_batch_size(global_batch_size)
        return ds.batch(batch, drop_remainder=True)

    return fn


def weights_of(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]
