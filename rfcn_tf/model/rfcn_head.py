"""R-FCN head (R-FCN sec. 2): position-sensitive score maps, PS-RoI pooling, voting.

Shape shorthand:
    B    batch size
    h,w  head feature map height/width (stride 16)
    Cin  channels of the head features (ResNet conv5: 2048)
    D    channels of the dimension-reducing 1x1 conv (`channels`, 1024 in the paper)
    C    object classes (without background); C + 1 with background (class 0)
    k    PS grid size (`config.k`, k x k bins, 7 in the paper); kh x kw for a rectangular
         `config.grid`
    R    RoIs per image
    q    box classes: 1 (class-agnostic boxes, the paper) or C (class-specific)

Naming convention:
    *_maps    position-sensitive score maps, NHWC, bin-major channels: bin (i, j), entry c is
              channel (i*kw + j)*n + c (docs/ARCHITECTURE.md, "PS-RoI pooling op"),
              n = C + 1 or 4q (box entry c = class*4 + coordinate)
    *_logits  raw class scores (softmax applied only at inference, by the detector)
    *_deltas  raw (dy, dx, dh, dw) per box class, encoded with `config.box_weights`

The head: conv5 -> 1x1 conv to D channels (ReLU, "a randomly initialized 1024-d 1x1 conv
layer for reducing dimension", sec. 2.2) -> sibling 1x1 convs to k^2 (C+1) classification
maps and 4 k^2 class-agnostic box maps (sec. 2, "Position-sensitive score maps" and "box
regression"; 4 k^2 C class-specific maps with `class_agnostic_boxes: false`, as py-R-FCN and
the TF Object Detection API offer) -> PS-RoI pooling of both (`rfcn_tf.ops.psroi_pool.ps_roi_pool`) -> average
voting over the k x k bins (sec. 2, eq. 2: "we simply vote by averaging the scores"), so the
logits keep the scale of one bin's score whatever k is.

Deformable R-FCN (Dai et al., "Deformable Convolutional Networks", ICCV 2017, sec. 2.2;
`pooling_mode: deformable`): both poolings are `DeformablePSRoIPooling` layers
(rfcn_tf/model/deformable.py), each with its own zero-initialized 1x1 offset conv on the head's
1x1-reduced features D (the reference code's `rfcn_cls_offset_t` / `rfcn_bbox_offset_t`), whose
maps are pooled per RoI and bin by the plain bilinear PS-RoI pooling; the class maps get one
offset field for all classes (`deformable_class_offsets: false`, the default) or one per class
(true, the reference's setting), the box maps always one. At initialization the offsets are 0
and the head equals the bilinear head (same sampling_ratio) exactly.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rfcn_tf.model.sections import POOLING_MODES, PSROI_IMPLS, HeadConfig, as_section

__all__ = ["POOLING_MODES", "PSROI_IMPLS", "RFCNHead", "flatten_rois"]


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
        config: `HeadConfig` (or its dict; copied): `channels` (D, the 1x1 reducing conv, 1024
            in the paper), `k` / `grid` (the PS grid), `pooling_mode` ("avg": the paper's
            PS-RoI pooling, "bilinear": PSRoIAlign, "deformable": deformable PS-RoI pooling),
            `sampling_ratio` (bilinear / deformable samples per bin side, <= 0 adaptive:
            bilinear only), `trans_std` and `deformable_class_offsets` (deformable),
            `psroi_impl` ("auto" | "custom" | "tf", passed to `ps_roi_pool` and the deformable
            layers), `box_weights` (the box coder of the deltas).
        feature_stride: input pixels per feature cell (spatial_scale = 1 / feature_stride).
        init_stddev: standard deviation of the Gaussian initializers (0.01), biases 0.

    Call arguments:
        features: `[B, h, w, Cin]` float head features (stride `feature_stride`).
        rois: `[B, R, 4]` float32 yxyx RoIs in input-image pixels (padding rows allowed:
            they pool something finite and the caller masks them).

    Returns:
        `(class_logits [B, R, C+1] float32, box_deltas [B, R, q, 4] float32)`, raw.

    Example:
        >>> head = RFCNHead(num_classes=20, config=HeadConfig(k=7))
        >>> logits, deltas = head(tf.zeros([1, 38, 63, 2048]), tf.constant([[[0., 0., 64., 64.]]]))
        >>> logits.shape, deltas.shape  # (1, 1, 21), (1, 1, 1, 4)
    """

    def __init__(self, *, num_classes, config=None, feature_stride=16, init_stddev=0.01, **kwargs):
        super().__init__(**kwargs)
        self.config = as_section(HeadConfig, config)
        cfg = self.config
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        if int(cfg.channels) < 1:
            raise ValueError(f"channels must be >= 1, got {cfg.channels!r}")
        if min(cfg.output_size) < 1:
            raise ValueError(f"the PS grid must be >= 1 x 1, got {cfg.output_size!r}")
        if cfg.pooling_mode not in POOLING_MODES:
            raise ValueError(
                f"pooling_mode must be one of {POOLING_MODES}, got {cfg.pooling_mode!r}"
            )
        if not feature_stride > 0:
            raise ValueError(f"feature_stride must be > 0, got {feature_stride!r}")
        if cfg.pooling_mode == "deformable":
            cfg.validate()  # square grid, sampling_ratio >= 1: a ConfigError naming the key
        if cfg.psroi_impl not in PSROI_IMPLS:
            raise ValueError(f"psroi_impl must be one of {PSROI_IMPLS}, got {cfg.psroi_impl!r}")
        if len(cfg.box_weights) != 4:
            raise ValueError(
                f"box_weights must have 4 values (wy, wx, wh, ww), got {cfg.box_weights!r}"
            )
        self.num_classes = int(num_classes)
        self.feature_stride = feature_stride
        self.init_stddev = float(init_stddev)
        self.num_bins = cfg.output_size[0] * cfg.output_size[1]
        self.num_box_classes = 1 if cfg.class_agnostic_boxes else self.num_classes  # q

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

        self.reduce = conv(self.config.channels, "rfcn_reduce", activation="relu")
        self.reduce.build(features_shape)
        hidden_shape = tuple(features_shape[:-1]) + (self.config.channels,)
        self.class_maps = conv(self.num_bins * (self.num_classes + 1), "rfcn_class_maps")
        self.class_maps.build(hidden_shape)
        self.box_maps = conv(self.num_bins * 4 * self.num_box_classes, "rfcn_box_maps")
        self.box_maps.build(hidden_shape)
        self.class_pool = self.box_pool = None
        if self.config.pooling_mode == "deformable":
            from rfcn_tf.model.deformable import DeformablePSRoIPooling

            def pool(groups, name):
                layer = DeformablePSRoIPooling(
                    output_size=self.config.k if self.config.grid is None else self.config.grid[0],
                    spatial_scale=1.0 / self.feature_stride,
                    sampling_ratio=self.config.sampling_ratio,
                    trans_std=self.config.trans_std,
                    offset_groups=groups,
                    impl=self.config.psroi_impl,
                    name=name,
                    dtype=self.dtype_policy,
                )
                layer.build(None, hidden_shape, (None, 5))
                return layer

            classes = self.num_classes + 1
            self.class_pool = pool(
                classes if self.config.deformable_class_offsets else 1, "rfcn_class_pool"
            )
            self.box_pool = pool(1, "rfcn_box_pool")
        self.built = True

    def features_and_maps(self, features):
        """`(hidden [B,h,w,D], class_maps [B,h,w,kh kw (C+1)], box_maps [B,h,w,4 q kh kw])`:
        the 1x1-reduced features (what the deformable offset convs read) and the score maps,
        float32, bin-major."""
        hidden = self.reduce(features)
        return (
            hidden,
            tf.cast(self.class_maps(hidden), tf.float32),
            tf.cast(self.box_maps(hidden), tf.float32),
        )

    def score_maps(self, features):
        """`(class_maps [B,h,w,kh kw (C+1)], box_maps [B,h,w,4 q kh kw])` float32, bin-major."""
        return self.features_and_maps(features)[1:]

    def pool_and_vote(self, maps, flat_rois, batch, count, *, hidden=None, layer=None):
        """PS-RoI pooling of `maps` ([B,h,w,kh kw n]) at `flat_rois` ([B*R,5]) then the mean
        over the bins (average voting) -> `[B, R, n]` float32. With a deformable pooling
        `layer`, it pools `layer(maps, hidden, flat_rois)` (offsets from `hidden`)."""
        from rfcn_tf.ops.psroi_pool import ps_roi_pool  # the op module loads its .so lazily

        kh, kw = self.config.output_size
        if layer is not None:
            pooled = layer(maps, hidden, flat_rois)  # [B*R, k, k, n]
        else:
            pooled = ps_roi_pool(
                maps,
                flat_rois,
                output_size=kh if kh == kw else (kh, kw),
                spatial_scale=1.0 / self.feature_stride,
                mode=self.config.pooling_mode,
                sampling_ratio=self.config.sampling_ratio,
                impl=self.config.psroi_impl,
            )  # [B*R, kh, kw, n]
        voted = tf.reduce_mean(pooled, axis=[1, 2])  # [B*R, n]
        depth = maps.shape[-1] // self.num_bins
        return tf.reshape(voted, tf.stack([batch, count, depth]))

    def call(self, features, rois):
        hidden, class_maps, box_maps = self.features_and_maps(features)
        rois = tf.cast(rois, tf.float32)
        batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
        flat_rois = flatten_rois(rois)
        class_logits = self.pool_and_vote(
            class_maps, flat_rois, batch, count, hidden=hidden, layer=self.class_pool
        )
        box_deltas = self.pool_and_vote(
            box_maps, flat_rois, batch, count, hidden=hidden, layer=self.box_pool
        )
        class_logits = tf.ensure_shape(class_logits, [None, None, self.num_classes + 1])
        box_deltas = tf.reshape(box_deltas, tf.stack([batch, count, self.num_box_classes, 4]))
        box_deltas = tf.ensure_shape(box_deltas, [None, None, self.num_box_classes, 4])
        return class_logits, box_deltas

    def compute_output_shape(self, features_shape, rois_shape=None):
        prefix = (None, None) if rois_shape is None else tuple(rois_shape[:2])
        return prefix + (self.num_classes + 1,), prefix + (self.num_box_classes, 4)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "config": dataclasses.asdict(self.config),
                "feature_stride": self.feature_stride,
                "init_stddev": self.init_stddev,
            }
        )
        return config
