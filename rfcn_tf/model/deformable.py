"""Keras layers of Deformable R-FCN (Dai et al., "Deformable Convolutional Networks", ICCV 2017).

* :class:`DeformablePSRoIPooling` (sec. 2.2, "Deformable Position-Sensitive RoI Pooling"): owns
  the sibling 1x1 offset conv on the head features (k*k*2*G channels, zero-initialized), pools
  the offset maps per RoI and bin with the plain bilinear PS-RoI pooling (as the reference code
  does), and pools the score maps with :func:`rfcn_tf.ops.deform_psroi_pool.deform_ps_roi_pool`.
  At initialization the offsets are 0: the layer is exactly the bilinear PS-RoI pooling.
* :class:`DeformableConv2D` (sec. 2.1; modulated DCN v2, Zhu et al. CVPR 2019, with
  ``modulated=True``): a conv with the shapes and weight names of ``keras.layers.Conv2D``
  (``kernel [kh, kw, Cin, Cout]``, ``bias``) plus a zero-initialized offset conv of the same
  kernel size, strides and dilation (2*kh*kw offset channels, + kh*kw mask channels when
  modulated). At initialization it is the plain conv: offsets 0 and, for DCN v2, mask
  ``2 * sigmoid(0) = 1`` (the paper's mask is ``sigmoid``, which starts at 0.5; the factor 2 lets
  a pretrained conv start unchanged, mask range (0, 2)).

Both compute in float32 (float16 / bfloat16 inputs are cast; the compiled ops take float32 and
float64) and take ``impl`` ("auto" | "custom" | "tf") for the ops: "tf" keeps a SavedModel to
stock ops (the serving / ONNX path).

Used by the model (Deformable R-FCN): ``model.head.pooling_mode: deformable`` makes RFCNHead
pool its class and box maps with two DeformablePSRoIPooling layers (rfcn_head.py), and
``model.backbone.deformable_blocks`` replaces the last conv5 / stage-5 3x3 convs by
DeformableConv2D (backbones.py); both take ``impl`` from ``model.head.psroi_impl``, which the
export forces to "tf".
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rfcn_tf.ops.deform_conv import deform_conv2d, normalize_conv_args
from rfcn_tf.ops.deform_psroi_pool import deform_ps_roi_pool
from rfcn_tf.ops.psroi_pool import ps_roi_pool

__all__ = ["DeformableConv2D", "DeformablePSRoIPooling"]

_IMPLS = ("auto", "custom", "tf")


def _check_impl(impl):
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    return impl


@keras.saving.register_keras_serializable(package="rfcn_tf")
class DeformablePSRoIPooling(keras.layers.Layer):
    """Deformable PS-RoI pooling with its own offset branch.

    Args:
        output_size: k (square grids only).
        spatial_scale: feature cells per input pixel (1/16).
        sampling_ratio: bilinear points per bin side (>= 1), for the offsets and the scores.
        trans_std: the paper's gamma (0.1): a bin moves by offset * trans_std * RoI size.
        offset_groups: G, 1 = class-agnostic offsets (default); G must divide the score maps'
            entries per bin (G = C + 1 on the class maps: per-class offsets).
        impl: passed to both pooling ops.

    Call arguments:
        score_maps: ``[B, h, w, k*k*n]`` position-sensitive maps, bin-major.
        offset_features: ``[B, h, w, D]`` the features the offset conv reads (the head's
            hidden 1x1-conv output in the reference code).
        rois: ``[R, 5]`` (batch_index, y1, x1, y2, x2) input-image pixels.

    Returns:
        ``[R, k, k, n]`` float32 pooled scores.
    """

    def __init__(
        self,
        output_size=7,
        spatial_scale=1.0 / 16,
        sampling_ratio=2,
        trans_std=0.1,
        offset_groups=1,
        impl="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.trans_std = float(trans_std)
        self.offset_groups = int(offset_groups)
        self.impl = _check_impl(impl)
        if self.output_size < 1 or self.sampling_ratio < 1 or self.offset_groups < 1:
            raise ValueError(
                f"output_size, sampling_ratio and offset_groups must be >= 1, got "
                f"{output_size!r}, {sampling_ratio!r}, {offset_groups!r}"
            )

    def build(self, score_maps_shape, offset_features_shape=None, rois_shape=None):
        k = self.output_size
        self.offset_conv = keras.layers.Conv2D(
            k * k * 2 * self.offset_groups,
            1,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="offset_conv",
            dtype=self.dtype_policy,
        )
        self.offset_conv.build(offset_features_shape)
        self.built = True

    def call(self, score_maps, offset_features, rois):
        k = self.output_size
        rois = tf.cast(rois, tf.float32)
        offset_maps = tf.cast(self.offset_conv(offset_features), tf.float32)
        offsets = ps_roi_pool(
            offset_maps,
            rois,
            output_size=k,
            spatial_scale=self.spatial_scale,
            mode="bilinear",
            sampling_ratio=self.sampling_ratio,
            impl=self.impl,
        )  # [R, k, k, 2G]
        if self.offset_groups > 1:
            offsets = tf.reshape(offsets, [-1, k, k, self.offset_groups, 2])
        return deform_ps_roi_pool(
            tf.cast(score_maps, tf.float32),
            rois,
            offsets,
            output_size=k,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            trans_std=self.trans_std,
            impl=self.impl,
        )

    def compute_output_shape(self, score_maps_shape, offset_features_shape=None, rois_shape=None):
        k = self.output_size
        depth = None if score_maps_shape[-1] is None else score_maps_shape[-1] // (k * k)
        return (None if rois_shape is None else rois_shape[0], k, k, depth)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            trans_std=self.trans_std,
            offset_groups=self.offset_groups,
            impl=self.impl,
        )
        return config


@keras.saving.register_keras_serializable(package="rfcn_tf")
class DeformableConv2D(keras.layers.Layer):
    """Deformable convolution (DCN v1; v2 with ``modulated=True``), NHWC, with its offset conv.

    Args:
        filters: Cout.
        kernel_size, strides, dilation_rate: int or pair, as ``keras.layers.Conv2D``.
        padding: "same" / "valid" (tf.nn.conv2d's rules).
        use_bias, kernel_initializer, bias_initializer: as ``keras.layers.Conv2D``.
        modulated: DCN v2 mask branch.
        impl: "auto" | "custom" | "tf" for ``deform_conv2d``.

    Weights: ``kernel [kh, kw, Cin, Cout]`` and ``bias [Cout]`` are those of the plain
    ``Conv2D`` it replaces (copy them with :meth:`set_conv_weights`), then the offset conv's.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        dilation_rate=1,
        use_bias=True,
        modulated=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        impl="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        self.kernel_size = tuple(int(v) for v in kernel_size)
        self.padding = str(padding).lower()
        strides_, dilations_, _, _ = normalize_conv_args(
            strides, dilation_rate, self.padding.upper()
        )
        self.strides, self.dilation_rate = strides_, dilations_
        self.use_bias = bool(use_bias)
        self.modulated = bool(modulated)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.impl = _check_impl(impl)
        if self.filters < 1 or len(self.kernel_size) != 2 or min(self.kernel_size) < 1:
            raise ValueError(
                f"filters and kernel_size must be >= 1, got {filters!r}, {kernel_size!r}"
            )

    def build(self, input_shape):
        kh, kw = self.kernel_size
        cin = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(kh, kw, cin, self.filters), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        taps = kh * kw
        self.offset_conv = keras.layers.Conv2D(
            taps * (3 if self.modulated else 2),
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="offset_conv",
            dtype=self.dtype_policy,
        )
        self.offset_conv.build(input_shape)
        self.built = True

    def set_conv_weights(self, kernel, bias=None):
        """Copies a plain conv's kernel (and bias) in; the offset branch stays as it is."""
        self.kernel.assign(kernel)
        if bias is not None:
            if self.bias is None:
                raise ValueError(f"{self.name}: use_bias=False, but a bias was given")
            self.bias.assign(bias)

    def call(self, inputs):
        taps = self.kernel_size[0] * self.kernel_size[1]
        raw = tf.cast(self.offset_conv(inputs), tf.float32)
        offsets = raw[..., : 2 * taps]
        mask = 2.0 * tf.sigmoid(raw[..., 2 * taps :]) if self.modulated else None
        out = deform_conv2d(
            tf.cast(inputs, tf.float32),
            offsets,
            tf.cast(self.kernel, tf.float32),
            mask=mask,
            strides=self.strides,
            dilations=self.dilation_rate,
            padding=self.padding.upper(),
            impl=self.impl,
        )
        if self.bias is not None:
            out = out + tf.cast(self.bias, tf.float32)
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        def size(n, k, s, d):
            if n is None:
                return None
            if self.padding == "same":
                return -(-n // s)
            return (n - (k - 1) * d - 1) // s + 1

        return (
            input_shape[0],
            size(input_shape[1], self.kernel_size[0], self.strides[0], self.dilation_rate[0]),
            size(input_shape[2], self.kernel_size[1], self.strides[1], self.dilation_rate[1]),
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            use_bias=self.use_bias,
            modulated=self.modulated,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            impl=self.impl,
        )
        return config
