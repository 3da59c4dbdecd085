"""RPN head (Faster R-CNN sec. 3.1): raw objectness logits and box deltas per anchor.

Shape shorthand:
    B    batch size
    h,w  feature map height/width (stride 16)
    Cin  channels of the RPN features (ResNet conv4: 1024)
    A    anchors per location (len(scales) * len(aspect_ratios))

Naming convention:
    *_logits  raw scores before the sigmoid (> 0 means "object")
    *_deltas  raw (dy, dx, dh, dw) relative to the anchors, box-coder weights (1, 1, 1, 1)

Channel order: objectness channel `a` and delta channels `4a .. 4a+3` belong to anchor `a`
of `AnchorGenerator` (scales outer, ratios inner), so `[B, h, w, A]` reshaped to
`[B, h*w*A]` and `[B, h, w, 4A]` reshaped to `[B, h*w*A, 4]` line up with the anchors
(order (y, x, anchor)).

`RPN` is the whole proposal network, configured by `model.rpn` (`RPNConfig`) and
`model.anchors`: it owns the head convs (`RPNHead`), the anchor grid (`AnchorGenerator`),
proposal generation (proposals.py), anchor labelling and sampling (targets.py) and its loss
(losses.py), so the detector only calls it.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rfcn_tf.model.anchors import AnchorGenerator
from rfcn_tf.model.losses import rpn_losses
from rfcn_tf.model.proposals import generate_proposals
from rfcn_tf.model.sections import AnchorsConfig, RPNConfig, as_section
from rfcn_tf.model.targets import rpn_targets

PROPOSAL_COUNTS = ("train", "test")


@keras.saving.register_keras_serializable(package="rfcn_tf")
class RPNHead(keras.layers.Layer):
    """3x3 conv (ReLU) followed by sibling 1x1 convs for objectness and box deltas.

    Faster R-CNN sec. 3.1: "an n x n spatial window (n = 3) ... mapped to a lower-dimensional
    feature ... fed into two sibling fully-connected layers (1x1 convs)"; one sigmoid logit per
    anchor (the binary-logistic variant of the 2k softmax scores). New layers are initialized
    from a zero-mean Gaussian with standard deviation 0.01, biases 0 (sec. 3.1.3).

    Args:
        num_anchors: A, anchors per location.
        channels: width of the 3x3 conv (512 for ResNet in R-FCN).
        init_stddev: standard deviation of the Gaussian kernel initializers.

    Call arguments:
        features: `[B, h, w, Cin]` float.

    Returns:
        `(objectness_logits [B, h, w, A], box_deltas [B, h, w, 4A])`, raw, compute dtype.

    Example:
        >>> head = RPNHead(num_anchors=9, channels=512)
        >>> logits, deltas = head(tf.zeros([1, 38, 63, 1024]))  # [1,38,63,9], [1,38,63,36]
    """

    def __init__(self, *, num_anchors, channels=512, init_stddev=0.01, **kwargs):
        super().__init__(**kwargs)
        if int(num_anchors) < 1 or int(channels) < 1:
            raise ValueError(
                f"RPNHead needs num_anchors >= 1 and channels >= 1, got num_anchors="
                f"{num_anchors!r}, channels={channels!r}"
            )
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.init_stddev = float(init_stddev)

    def build(self, input_shape):
        def init():
            return keras.initializers.RandomNormal(stddev=self.init_stddev)

        common = dict(kernel_initializer=init(), bias_initializer="zeros", dtype=self.dtype_policy)
        self.conv = keras.layers.Conv2D(
            self.channels, 3, padding="same", activation="relu", name="rpn_conv", **common
        )
        self.conv.build(input_shape)
        hidden_shape = tuple(input_shape[:-1]) + (self.channels,)
        common["kernel_initializer"] = init()
        self.objectness = keras.layers.Conv2D(self.num_anchors, 1, name="rpn_objectness", **common)
        self.objectness.build(hidden_shape)
        common["kernel_initializer"] = init()
        self.box_deltas = keras.layers.Conv2D(
            4 * self.num_anchors, 1, name="rpn_box_deltas", **common
        )
        self.box_deltas.build(hidden_shape)
        self.built = True

    def call(self, features):
        hidden = self.conv(features)
        return self.objectness(hidden), self.box_deltas(hidden)

    def compute_output_shape(self, input_shape):
        prefix = tuple(input_shape[:-1])
        return prefix + (self.num_anchors,), prefix + (4 * self.num_anchors,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_anchors": self.num_anchors,
                "channels": self.channels,
                "init_stddev": self.init_stddev,
            }
        )
        return config


def flatten_rpn_outputs(objectness_logits, box_deltas):
    """Reshapes the head's maps to per-anchor rows in AnchorGenerator order.

    Args:
        objectness_logits: `[B, h, w, A]`.
        box_deltas: `[B, h, w, 4A]`.

    Returns:
        `(objectness_logits [B, h*w*A] float32, box_deltas [B, h*w*A, 4] float32)`.
    """
    batch = tf.shape(objectness_logits)[0]
    logits = tf.reshape(tf.cast(objectness_logits, tf.float32), [batch, -1])
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [batch, -1, 4])
    return logits, deltas


@keras.saving.register_keras_serializable(package="rfcn_tf")
class RPN(keras.layers.Layer):
    """The region proposal network (Faster R-CNN sec. 3.1): head, anchors, proposals, targets
    and loss, configured by one `RPNConfig` and one `AnchorsConfig`.

    Args:
        config: `RPNConfig` (or its dict): head width, proposal counts, NMS, anchor labelling
            and sampling, loss weight. Copied.
        anchors: `AnchorsConfig` (or its dict): anchor scales and ratios. Copied.
        feature_stride: pixels per feature cell of the RPN features (16).

    Call arguments:
        features: `[B, h, w, Cin]` RPN features (stride `feature_stride`).
        image_shapes: int32 `[B, 2]` (height, width) of each image before padding.
        proposal_counts: `"train"` | `"test"` (pre/post-NMS counts of `config`), or None for
            no proposals (the RPN loss alone needs none).

    Returns (call):
        dict: `objectness_logits [B,h,w,A]`, `box_deltas [B,h,w,4A]` (float32 maps),
        `anchors [N,4]`, `logits_flat [B,N]`, `deltas_flat [B,N,4]`, and with proposal_counts
        `proposals [B,P,4]`, `proposal_scores [B,P]`, `num_proposals [B]` (stop_gradient-ed).

    Example:
        >>> rpn = RPN(RPNConfig(channels=64), AnchorsConfig(scales=[32.0]))
        >>> out = rpn(tf.zeros([1, 16, 16, 128]), tf.constant([[256, 256]]), "test")
    """

    def __init__(self, config=None, anchors=None, *, feature_stride=16, **kwargs):
        kwargs.setdefault("name", "rpn")
        super().__init__(**kwargs)
        self.config = as_section(RPNConfig, config)
        self.anchors_config = as_section(AnchorsConfig, anchors)
        self.feature_stride = int(feature_stride)
        self.anchor_generator = AnchorGenerator(
            stride=self.feature_stride,
            scales=self.anchors_config.scales,
            aspect_ratios=self.anchors_config.ratios,
        )
        self.head = RPNHead(
            num_anchors=self.anchor_generator.num_anchors_per_location,
            channels=self.config.channels,
            name="rpn_head",
            dtype=self.dtype_policy,
        )

    def build(self, features_shape, image_shapes_shape=None):
        self.head.build(features_shape)
        self.built = True

    def call(self, features, image_shapes, proposal_counts=None):
        logits_map, deltas_map = self.head(features)
        anchors = self.anchor_generator(tf.shape(features)[1], tf.shape(features)[2])  # [N, 4]
        logits, deltas = flatten_rpn_outputs(logits_map, deltas_map)
        out = {
            "objectness_logits": tf.cast(logits_map, tf.float32),
            "box_deltas": tf.cast(deltas_map, tf.float32),
            "anchors": anchors,
            "logits_flat": logits,
            "deltas_flat": deltas,
        }
        if proposal_counts is None:
            return out
        if proposal_counts not in PROPOSAL_COUNTS:
            raise ValueError(
                f"proposal_counts must be 'train', 'test' or None, got {proposal_counts!r}"
            )
        cfg = self.config
        pre, post = (
            (cfg.pre_nms_top_n_train, cfg.post_nms_top_n_train)
            if proposal_counts == "train"
            else (cfg.pre_nms_top_n_test, cfg.post_nms_top_n_test)
        )
        # generate_proposals stop_gradients its outputs: approximate joint training
        # (Faster R-CNN sec. 3.2), the head treats proposals as fixed inputs.
        proposals, scores, num = generate_proposals(
            logits,
            deltas,
            anchors,
            image_shapes,
            pre_nms_top_n=pre,
            post_nms_top_n=post,
            nms_iou=cfg.nms_iou,
            min_size=cfg.min_size,
        )
        out.update(proposals=proposals, proposal_scores=scores, num_proposals=num)
        return out

    def compute_losses(self, outputs, gt_boxes, gt_mask, image_shapes, *, seed=None):
        """`{"rpn_objectness_loss", "rpn_box_loss"}` float32 scalars of `call`'s `outputs`:
        anchor labels and a sample of `batch_size_per_image` anchors per image (rpn_targets),
        then rpn_losses. Unweighted (`config.loss_weight` applies in the total)."""
        cfg = self.config
        targets = rpn_targets(
            outputs["anchors"],
            gt_boxes,
            gt_mask,
            image_shapes,
            positive_iou=cfg.positive_iou,
            negative_iou=cfg.negative_iou,
            batch_size_per_image=cfg.batch_size_per_image,
            positive_fraction=cfg.positive_fraction,
            allowed_border=cfg.allowed_border,
            seed=seed,
        )
        return rpn_losses(
            outputs["logits_flat"],
            outputs["deltas_flat"],
            targets["labels"],
            targets["box_targets"],
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            config=dataclasses.asdict(self.config),
            anchors=dataclasses.asdict(self.anchors_config),
            feature_stride=self.feature_stride,
        )
        return config
