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
(order (y, x, anchor)). Decoding, NMS and losses live in proposals.py / losses.py.
"""

from __future__ import annotations

import keras
import tensorflow as tf


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
        self.box_deltas = keras.layers.Conv2D(4 * self.num_anchors, 1, name="rpn_box_deltas", **common)
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
            {"num_anchors": self.num_anchors, "channels": self.channels, "init_stddev": self.init_stddev}
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
