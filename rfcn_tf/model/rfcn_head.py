"""R-FCN head (R-FCN sec. 2): position-sensitive score maps, PS-RoI pooling, voting.

Shape shorthand:
    B    batch size
    h,w  head feature map height/width (stride 16)
    Cin  channels of the head features (ResNet conv5: 2048)
    D    channels of the dimension-reducing 1x1 conv (`channels`, 1024 in the paper)
    C    object classes (without background); C + 1 with background (class 0)
    k    PS grid size (`ps_k`, k x k bins, 7 in the paper)
    R    RoIs per image

Naming convention:
    *_maps    position-sensitive score maps, NHWC, bin-major channels: bin (i, j), entry c is
              channel (i*k + j)*n + c (DESIGN.md, "PS-RoI pooling op"), n = C + 1 or 4
    *_logits  raw class scores (softmax applied only at inference, by the detector)
    *_deltas  raw class-agnostic (dy, dx, dh, dw), box-coder weights chosen by the detector

The head: conv5 -> 1x1 conv to D channels (ReLU, "a randomly initialized 1024-d 1x1 conv
layer for reducing dimension", sec. 2.2) -> sibling 1x1 convs to k^2 (C+1) classification
maps and 4 k^2 class-agnostic box maps (sec. 2, "Position-sensitive score maps" and "box
regression") -> PS-RoI pooling of both (`rfcn_tf.ops.psroi_pool.ps_roi_pool`) -> average
voting over the k x k bins (sec. 2, eq. 2: "we simply vote by averaging the scores"), so the
logits keep the scale of one bin's score whatever k is.
"""

from __future__ import annotations

import keras
import tensorflow as tf

POOLING_MODES = ("avg", "bilinear")
PSROI_IMPLS = ("auto", "custom", "tf")


def flatten_rois(rois):
    """`[B, R, 4]` per-image RoIs -> `[B*R, 5]` rows `(batch_index, y1, x1, y2, x2)`.

    Args:
        rois: `[B, R, 4]` float yxyx pixels of the input image.

    Returns:
        `[B*R, 5]` float32, row `b*R + r` is RoI r of image b (the layout ps_roi_pool takes).
    """
    rois = tf.cast(rois, tf.float32)
    batch = tf.shape(rois)[0]
    count = tf.shape(rois)[1]
    index = tf.repeat(tf.cast(tf.range(batch), tf.float32), count)  # [B*R]
    return tf.concat([index[:, None], tf.reshape(rois, [-1, 4])], axis=1)


@keras.saving.register_keras_serializable(package="rfcn_tf")
class RFCNHead(keras.layers.Layer):
    """Position-sensitive score maps, PS-RoI pooling and voting.

    Args:
        num_classes: C, object classes without background.
        channels: D, width of the 1x1 dimension-reducing conv (ReLU), 1024 in the paper.
        ps_k: k, the PS grid size (7 in the paper).
        pooling_mode: `"avg"` (the paper's PS-RoI pooling) or `"bilinear"` (PSRoIAlign).
        sampling_ratio: bilinear samples per bin side (bilinear mode only).
        feature_stride: input pixels per feature cell (spatial_scale = 1 / feature_stride).
        psroi_impl: `"auto"` | `"custom"` (compiled op) | `"tf"` (stock-TF twin, exported
            graphs), passed to `ps_roi_pool`.
        init_stddev: standard deviation of the Gaussian initializers (0.01), biases 0.

    Call arguments:
        features: `[B, h, w, Cin]` float head features (stride `feature_stride`).
        rois: `[B, R, 4]` float32 yxyx RoIs in input-image pixels (padding rows allowed:
            they pool something finite and the caller masks them).

    Returns:
        `(class_logits [B, R, C+1] float32, box_deltas [B, R, 4] float32)`, raw.

    Example:
        >>> head = RFCNHead(num_classes=20, ps_k=7)
        >>> logits, deltas = head(tf.zeros([1, 38, 63, 2048]), tf.constant([[[0., 0., 64., 64.]]]))
        >>> logits.shape, deltas.shape  # (1, 1, 21), (1, 1, 4)
    """

    def __init__(
        self,
        *,
        num_classes,
        channels=1024,
        ps_k=7,
        pooling_mode="avg",
        sampling_ratio=2,
        feature_stride=16,
        psroi_impl="auto",
        init_stddev=0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels!r}")
        if int(ps_k) < 1:
            raise ValueError(f"ps_k must be >= 1, got {ps_k!r}")
        if pooling_mode not in POOLING_MODES:
            raise ValueError(f"pooling_mode must be one of {POOLING_MODES}, got {pooling_mode!r}")
        if int(sampling_ratio) < 1:
            raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio!r}")
        if not feature_stride > 0:
            raise ValueError(f"feature_stride must be > 0, got {feature_stride!r}")
        if psroi_impl not in PSROI_IMPLS:
            raise ValueError(f"psroi_impl must be one of {PSROI_IMPLS}, got {psroi_impl!r}")
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.ps_k = int(ps_k)
        self.pooling_mode = pooling_mode
        self.sampling_ratio = int(sampling_ratio)
        self.feature_stride = feature_stride
        self.psroi_impl = psroi_impl
        self.init_stddev = float(init_stddev)

    def build(self, features_shape, rois_shape=None):
        def conv(filters, name, activation=None):
            return keras.layers.Conv2D(
                filters,
                1,
                activation=activation,
                kernel_initializer=keras.initializers.RandomNormal(stddev=self.init_stddev),
                bias_initializer="zeros",
                name=name,
                dtype=self.dtype_policy,
            )

        k2 = self.ps_k * self.ps_k
        self.reduce = conv(self.channels, "rfcn_reduce", activation="relu")
        self.reduce.build(features_shape)
        hidden_shape = tuple(features_shape[:-1]) + (self.channels,)
        self.class_maps = conv(k2 * (self.num_classes + 1), "rfcn_class_maps")
        self.class_maps.build(hidden_shape)
        self.box_maps = conv(k2 * 4, "rfcn_box_maps")
        self.box_maps.build(hidden_shape)
        self.built = True

    def score_maps(self, features):
        """`(class_maps [B,h,w,k^2 (C+1)], box_maps [B,h,w,4k^2])` float32, bin-major."""
        hidden = self.reduce(features)
        return (
            tf.cast(self.class_maps(hidden), tf.float32),
            tf.cast(self.box_maps(hidden), tf.float32),
        )

    def pool_and_vote(self, maps, flat_rois, batch, count):
        """PS-RoI pooling of `maps` ([B,h,w,k^2 n]) at `flat_rois` ([B*R,5]) then the mean
        over the k x k bins (average voting) -> `[B, R, n]` float32."""
        from rfcn_tf.ops.psroi_pool import ps_roi_pool  # the op module loads its .so lazily

        pooled = ps_roi_pool(
            maps,
            flat_rois,
            output_size=self.ps_k,
            spatial_scale=1.0 / self.feature_stride,
            mode=self.pooling_mode,
            sampling_ratio=self.sampling_ratio,
            impl=self.psroi_impl,
        )  # [B*R, k, k, n]
        voted = tf.reduce_mean(pooled, axis=[1, 2])  # [B*R, n]
        depth = maps.shape[-1] // (self.ps_k * self.ps_k)
        return tf.reshape(voted, tf.stack([batch, count, depth]))

    def call(self, features, rois):
        class_maps, box_maps = self.score_maps(features)
        rois = tf.cast(rois, tf.float32)
        batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
        flat_rois = flatten_rois(rois)
        class_logits = self.pool_and_vote(class_maps, flat_rois, batch, count)
        box_deltas = self.pool_and_vote(box_maps, flat_rois, batch, count)
        class_logits = tf.ensure_shape(class_logits, [None, None, self.num_classes + 1])
        box_deltas = tf.ensure_shape(box_deltas, [None, None, 4])
        return class_logits, box_deltas

    def compute_output_shape(self, features_shape, rois_shape=None):
        prefix = (None, None) if rois_shape is None else tuple(rois_shape[:2])
        return prefix + (self.num_classes + 1,), prefix + (4,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "channels": self.channels,
                "ps_k": self.ps_k,
                "pooling_mode": self.pooling_mode,
                "sampling_ratio": self.sampling_ratio,
                "feature_stride": self.feature_stride,
                "psroi_impl": self.psroi_impl,
                "init_stddev": self.init_stddev,
            }
        )
        return config
