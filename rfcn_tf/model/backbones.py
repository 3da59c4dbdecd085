"""Backbones: ResNet-50/101 with a dilated conv5 (R-FCN sec. 2.2), and a small CPU net.

Shape shorthand:
    B   batch size
    H,W padded input image height/width, pixels (a multiple of 16 in practice)
    h,w feature map height/width: ceil(H / 16), ceil(W / 16) (stride 16)
    Cr  channels of the RPN features (ResNet: 1024, conv4; small: widths[2])
    Ch  channels of the head features (ResNet: 2048, conv5; small: widths[3])

Every backbone is a functional `keras.Model` that takes raw uint8 RGB images `[B, H, W, 3]`
and returns `(rpn_features [B, h, w, Cr], head_features [B, h, w, Ch])`, both at stride 16.
The pixel normalization is the model's first layer (`ImagePreprocessing`), so a serving
graph can take raw uint8 pixels (docs/ARCHITECTURE.md, "Boxes, images, classes").

ResNet (R-FCN sec. 2.2 "Backbone architecture" and sec. 3 "Implementation details"):
    * the layers and their names are those of `keras.applications.ResNet50/ResNet101`
      (`conv1_conv`, `conv4_block23_2_conv`, ...), so ImageNet weights transfer by name;
    * the RPN reads conv4 (stride 16) as in the paper; conv5's first stride is removed
      and its 3x3 convolutions are dilated by 2 (the "a trous" trick), so conv5 is also
      at stride 16; dilation does not change kernel shapes;
    * BatchNorm is frozen (inference mode, gamma/beta not trained), as with the small
      per-GPU batches of detection training; the stem and the first stage are frozen
      by default (`freeze_stages=2`).

Small backbone: a narrow ResNet-18-style net trained from scratch (trainable BatchNorm),
used by the CPU configs (`shapes_tiny`, `bccd`): stem (7x7/2 conv + 3x3/2 max-pool),
four stages of basic blocks with widths `widths`, strides 1, 2, 2 and a last stage at
stride 1 with dilation 2 (the same layout as the ResNet: RPN on stage 4, head on stage 5).

Deformable conv5 (Deformable ConvNets, Dai et al. ICCV 2017, sec. 2.1; DCN v2 with
`deformable_modulated`): `deformable_blocks = n` turns the 3x3 conv (`{block}_2_conv`) of the
last n blocks of the head stage (ResNet conv5: n = 3 is res5a/b/c, the reference code's
setting; small: stage 5) into a `DeformableConv2D` of the same name, kernel and dilation
(rfcn_tf/model/deformable.py). Its offsets start at 0, so at initialization the network is the
plain one; name-based weight loading copies a plain conv's kernel and bias into it
(`set_conv_weights`). `deformable_impl` is the deformable op's impl ("tf" in exports: stock ops).

Weights: `load_pretrained_weights(backbone, weights)` copies weights by layer name from
keras.applications' ImageNet ResNet (`"imagenet"`), from a local `.weights.h5` / `.h5`
file in keras.applications' layout, or from a `.keras` model file.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from rfcn_tf.model.deformable import DeformableConv2D

# keras.applications.resnet.preprocess_input ("caffe" mode): BGR channel means, pixels 0..255.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_BN_EPSILON = 1.001e-5  # keras.applications' ResNet value (weights transfer with it)


@keras.saving.register_keras_serializable(package="rfcn_tf")
class ImagePreprocessing(keras.layers.Layer):
    """Turns raw RGB pixels into the backbone's input scale.

    Args:
        mode: `"caffe"`: RGB -> BGR and subtraction of the ImageNet BGR means
            `(103.939, 116.779, 123.68)`, no scaling (keras.applications.resnet's
            `preprocess_input`, what its ImageNet weights expect); `"tf"`: `x / 127.5 - 1`
            (range [-1, 1]; for backbones trained from scratch).

    Call arguments:
        images: `[B, H, W, 3]` RGB, uint8 (0..255) or a float dtype on the same scale.

    Returns:
        `[B, H, W, 3]` in the layer's compute dtype.

    Example:
        >>> layer = ImagePreprocessing(mode="caffe")
        >>> layer(tf.zeros([1, 4, 4, 3], tf.uint8))[0, 0, 0].numpy()  # -> -BGR means
    """

    MODES = ("caffe", "tf")

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImagePreprocessing mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        x = tf.cast(images, tf.float32)
        if self.mode == "caffe":
            x = tf.reverse(x, axis=[-1]) - tf.constant(CAFFE_BGR_MEAN, tf.float32)
        else:
            x = x / 127.5 - 1.0
        return tf.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="rfcn_tf")
class Subsample2D(keras.layers.Layer):
    """Keeps every `stride`-th row and column: `x[:, ::stride, ::stride, :]`.

    `Subsample2D(s)` followed by a 1x1 conv of stride 1 equals a 1x1 conv of stride s (with
    "valid" or "same" padding: output size ceil(n / s)) and has the same kernel. We use it
    instead of strided 1x1 convs because TF 2.21's oneDNN CPU kernel for the filter gradient
    of a strided 1x1 conv (Conv2DBackpropFilter) crashes the process (segfault) when a
    tf.function with unknown spatial dims runs on a second input size (seen here with
    tensorflow-cpu 2.21.0; TF_ENABLE_ONEDNN_OPTS=0 avoids it too, at a large speed cost).

    Call arguments:
        x: `[B, H, W, C]`.

    Returns:
        `[B, ceil(H / stride), ceil(W / stride), C]`.
    """

    def __init__(self, stride=2, **kwargs):
        super().__init__(**kwargs)
        if int(stride) < 1:
            raise ValueError(f"Subsample2D stride must be >= 1, got {stride!r}")
        self.stride = int(stride)

    def call(self, x):
        return x[:, :: self.stride, :: self.stride, :]

    def compute_output_shape(self, input_shape):
        def size(n):
            return None if n is None else -(-n // self.stride)

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"stride": self.stride})
        return config


def _strided_1x1_conv(x, filters, *, stride, name, **conv_kwargs):
    """A 1x1 conv of stride `stride` named `name`, as Subsample2D + stride-1 conv (see there)."""
    if stride > 1:
        x = Subsample2D(stride, name=f"{name}_subsample")(x)
    return keras.layers.Conv2D(filters, 1, name=name, **conv_kwargs)(x)


def _conv3x3(filters, *, dilation, name, deformable, **kwargs):
    """The blocks' 3x3 conv (`{block}_2_conv`): a Conv2D, or with `deformable` (a dict of
    DeformableConv2D's `modulated` and `impl`) a DeformableConv2D of the same name and kernel."""
    if deformable:
        return DeformableConv2D(
            filters, 3, padding="same", dilation_rate=dilation, name=name, **deformable, **kwargs
        )
    return keras.layers.Conv2D(
        filters, 3, padding="same", dilation_rate=dilation, name=name, **kwargs
    )


def _deformable_args(block, blocks, count, modulated, impl):
    """DeformableConv2D arguments for `block` (1-based) of a stage of `blocks` blocks whose last
    `count` are deformable, or None."""
    return dict(modulated=modulated, impl=impl) if block > blocks - count else None


def _resnet_block(
    x, filters, *, stride, dilation, conv_shortcut, name, trainable_bn, deformable=None
):
    """keras.applications' `residual_block_v1` (bottleneck, stride on the 1x1 conv), with an
    optional dilation of the 3x3 conv (deformable with `deformable`, see `_conv3x3`). Layer
    names match keras.applications."""
    bn = dict(axis=3, epsilon=_BN_EPSILON, trainable=trainable_bn)
    if conv_shortcut:
        shortcut = _strided_1x1_conv(x, 4 * filters, stride=stride, name=f"{name}_0_conv")
        shortcut = keras.layers.BatchNormalization(name=f"{name}_0_bn", **bn)(shortcut)
    else:
        shortcut = x
    x = _strided_1x1_conv(x, filters, stride=stride, name=f"{name}_1_conv")
    x = keras.layers.BatchNormalization(name=f"{name}_1_bn", **bn)(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv3x3(filters, dilation=dilation, name=f"{name}_2_conv", deformable=deformable)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_2_bn", **bn)(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_3_bn", **bn)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="rfcn_tf")
class ResNetBackbone(keras.Model):
    """ResNet-50/101 feature extractor for R-FCN (stride 16 for both outputs).

    Args:
        depth: 50 or 101.
        freeze_stages: number of leading stages whose weights are not trained:
            0 none, 1 the stem (`conv1`), 2 stem + `conv2` (default, as detectron's
            FREEZE_AT=2), ... 5 everything.
        freeze_batchnorm: if True (default), every BatchNorm layer uses its moving
            statistics and its gamma/beta are not trained (R-FCN sec. 3: BN statistics are
            fixed to those of ImageNet pre-training).
        dilate_conv5: if True (default), conv5 keeps stride 16 with 3x3 convs dilated by 2
            (R-FCN sec. 2.2, "a trous"); if False, conv5 is keras.applications' original
            (stride 32), which is only useful to check weight transfer.
        preprocessing: `ImagePreprocessing` mode (`"caffe"` matches keras.applications).
        deformable_blocks: the last n conv5 blocks whose 3x3 conv is deformable (0..3).
        deformable_modulated: DCN v2 mask term in those convs.
        deformable_impl: "auto" | "custom" | "tf", the deformable op's implementation.

    Call arguments:
        images: uint8 `[B, H, W, 3]` RGB pixels (padding zeros allowed).
        training: ignored by frozen BatchNorm.

    Returns:
        `(rpn_features [B, h, w, 1024] (conv4), head_features [B, h, w, 2048] (conv5))`,
        h = ceil(H / 16), w = ceil(W / 16).

    Example:
        >>> backbone = ResNetBackbone(depth=50)
        >>> load_pretrained_weights(backbone, "/path/resnet50_notop.weights.h5")
        >>> c4, c5 = backbone(tf.zeros([1, 224, 224, 3], tf.uint8))  # [1,14,14,1024], [1,14,14,2048]
    """

    feature_stride = 16

    def __init__(
        self,
        *,
        depth=50,
        freeze_stages=2,
        freeze_batchnorm=True,
        dilate_conv5=True,
        preprocessing="caffe",
        deformable_blocks=0,
        deformable_modulated=False,
        deformable_impl="auto",
        **kwargs,
    ):
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth!r}")
        if not 0 <= int(freeze_stages) <= 5:
            raise ValueError(f"freeze_stages must be in [0, 5], got {freeze_stages!r}")
        if not 0 <= int(deformable_blocks) <= RESNET_BLOCKS[depth][3]:
            raise ValueError(
                f"deformable_blocks must be in [0, {RESNET_BLOCKS[depth][3]}] (conv5 "
                f"blocks), got {deformable_blocks!r}"
            )
        kwargs.setdefault("name", f"resnet{depth}_backbone")
        trainable_bn = not freeze_batchnorm

        images = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
        x = ImagePreprocessing(mode=preprocessing, name="preprocessing")(images)
        x = keras.layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(x)
        x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
        x = keras.layers.BatchNormalization(
            axis=3, epsilon=_BN_EPSILON, trainable=trainable_bn, name="conv1_bn"
        )(x)
        x = keras.layers.Activation("relu", name="conv1_relu")(x)
        x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

        stage_filters = (64, 128, 256, 512)
        outputs = {}
        for stage, (filters, blocks) in enumerate(zip(stage_filters, RESNET_BLOCKS[depth]), 2):
            if stage == 2:
                stride, dilation = 1, 1
            elif stage == 5 and dilate_conv5:
                stride, dilation = 1, 2  # R-FCN sec. 2.2: conv5 at stride 16, a trous
            else:
                stride, dilation = 2, 1
            for block in range(1, blocks + 1):
                x = _resnet_block(
                    x,
                    filters,
                    stride=stride if block == 1 else 1,
                    dilation=dilation,
                    conv_shortcut=block == 1,
                    name=f"conv{stage}_block{block}",
                    trainable_bn=trainable_bn,
                    deformable=stage == 5
                    and _deformable_args(
                        block,
                        blocks,
                        int(deformable_blocks),
                        bool(deformable_modulated),
                        deformable_impl,
                    ),
                )
            outputs[stage] = x
        super().__init__(inputs=images, outputs=[outputs[4], outputs[5]], **kwargs)

        self.depth = int(depth)
        self.freeze_stages = int(freeze_stages)
        self.freeze_batchnorm = bool(freeze_batchnorm)
        self.dilate_conv5 = bool(dilate_conv5)
        self.preprocessing = preprocessing
        self.deformable_blocks = int(deformable_blocks)
        self.deformable_modulated = bool(deformable_modulated)
        self.deformable_impl = deformable_impl
        self.rpn_channels = 1024
        self.head_channels = 2048
        for layer in self.layers:
            stage = _resnet_stage(layer.name)
            if stage is not None and stage <= self.freeze_stages:
                layer.trainable = False

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "depth": self.depth,
            "freeze_stages": self.freeze_stages,
            "freeze_batchnorm": self.freeze_batchnorm,
            "dilate_conv5": self.dilate_conv5,
            "preprocessing": self.preprocessing,
            "deformable_blocks": self.deformable_blocks,
            "deformable_modulated": self.deformable_modulated,
            "deformable_impl": self.deformable_impl,
        }


def _resnet_stage(layer_name):
    """Stage index (1 = stem `conv1`/`pool1`, 2..5 = `convN_*`) of a ResNet layer, or None."""
    if layer_name.startswith("pool1") or layer_name.startswith("conv1_"):
        return 1
    for stage in range(2, 6):
        if layer_name.startswith(f"conv{stage}_"):
            return stage
    return None


def _norm_layer(norm, name):
    if norm == "batch":
        # momentum 0.9: short from-scratch schedules need moving statistics that follow.
        return keras.layers.BatchNormalization(axis=3, momentum=0.9, name=name)
    if norm == "group":
        return keras.layers.GroupNormalization(groups=8, axis=3, name=name)
    if norm == "none":
        return keras.layers.Identity(name=name)
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}")


def _basic_block(x, filters, *, stride, dilation, norm, name, deformable=None):
    """ResNet-18 basic block (two 3x3 convs), projection shortcut when the shape changes; the
    second 3x3 conv is deformable with `deformable` (see `_conv3x3`)."""
    init = "he_normal"
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _strided_1x1_conv(
            x,
            filters,
            stride=stride,
            use_bias=False,
            kernel_initializer=init,
            name=f"{name}_0_conv",
        )
        shortcut = _norm_layer(norm, f"{name}_0_norm")(shortcut)
    else:
        shortcut = x
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=init,
        name=f"{name}_1_conv",
    )(x)
    x = _norm_layer(norm, f"{name}_1_norm")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv3x3(
        filters,
        dilation=dilation,
        name=f"{name}_2_conv",
        deformable=deformable,
        use_bias=False,
        kernel_initializer=init,
    )(x)
    x = _norm_layer(norm, f"{name}_2_norm")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="rfcn_tf")
class SmallBackbone(keras.Model):
    """Narrow ResNet-18-style backbone trained from scratch on the CPU.

    Layout (strides relative to the input): stem 7x7/2 conv + 3x3/2 max-pool (4), stage 2
    (widths[0], 4), stage 3 (widths[1], 8), stage 4 (widths[2], 16) -> RPN features,
    stage 5 (widths[3], stride 16, 3x3 convs dilated by 2 as R-FCN's conv5) -> head features.

    Args:
        widths: 4 channel widths of stages 2..5, e.g. `(32, 64, 128, 256)`.
        blocks: basic blocks per stage (4 ints), e.g. `(1, 1, 2, 1)`.
        norm: `"batch"` (trainable BatchNorm, momentum 0.9), `"group"` (8 groups) or
            `"none"`.
        preprocessing: `ImagePreprocessing` mode (default `"tf"`: pixels to [-1, 1]).
        deformable_blocks: the last n stage-5 blocks whose second 3x3 conv is deformable.
        deformable_modulated, deformable_impl: as `ResNetBackbone`.

    Call arguments:
        images: uint8 `[B, H, W, 3]` RGB pixels.
        training: BatchNorm mode.

    Returns:
        `(rpn_features [B, h, w, widths[2]], head_features [B, h, w, widths[3]])`,
        h = ceil(H / 16), w = ceil(W / 16).

    Example:
        >>> backbone = SmallBackbone(widths=(32, 64, 128, 256))
        >>> rpn, head = backbone(tf.zeros([2, 256, 256, 3], tf.uint8))  # [2,16,16,128], [2,16,16,256]
    """

    feature_stride = 16

    def __init__(
        self,
        *,
        widths=(32, 64, 128, 256),
        blocks=(1, 1, 2, 1),
        norm="batch",
        preprocessing="tf",
        deformable_blocks=0,
        deformable_modulated=False,
        deformable_impl="auto",
        **kwargs,
    ):
        widths = [int(v) for v in widths]
        blocks = [int(v) for v in blocks]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive ints, got {widths!r}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive ints, got {blocks!r}")
        if norm == "group" and any(v % 8 for v in widths):
            raise ValueError(f"norm='group' (8 groups) needs widths divisible by 8, got {widths!r}")
        if not 0 <= int(deformable_blocks) <= blocks[3]:
            raise ValueError(
                f"deformable_blocks must be in [0, {blocks[3]}] (stage-5 blocks), "
                f"got {deformable_blocks!r}"
            )
        _norm_layer(norm, "probe")  # validates `norm` before building anything
        kwargs.setdefault("name", "small_backbone")

        images = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
        x = ImagePreprocessing(mode=preprocessing, name="preprocessing")(images)
        x = keras.layers.Conv2D(
            widths[0],
            7,
            strides=2,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name="stem_conv",
        )(x)
        x = _norm_layer(norm, "stem_norm")(x)
        x = keras.layers.Activation("relu", name="stem_relu")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        outputs = {}
        for stage, (width, count) in enumerate(zip(widths, blocks), 2):
            stride = 2 if stage in (3, 4) else 1
            dilation = 2 if stage == 5 else 1
            for block in range(1, count + 1):
                x = _basic_block(
                    x,
                    width,
                    stride=stride if block == 1 else 1,
                    dilation=dilation,
                    norm=norm,
                    name=f"stage{stage}_block{block}",
                    deformable=stage == 5
                    and _deformable_args(
                        block,
                        count,
                        int(deformable_blocks),
                        bool(deformable_modulated),
                        deformable_impl,
                    ),
                )
            outputs[stage] = x
        super().__init__(inputs=images, outputs=[outputs[4], outputs[5]], **kwargs)
        self.widths = widths
        self.blocks = blocks
        self.norm = norm
        self.preprocessing = preprocessing
        self.deformable_blocks = int(deformable_blocks)
        self.deformable_modulated = bool(deformable_modulated)
        self.deformable_impl = deformable_impl
        self.rpn_channels = widths[2]
        self.head_channels = widths[3]

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "widths": list(self.widths),
            "blocks": list(self.blocks),
            "norm": self.norm,
            "preprocessing": self.preprocessing,
            "deformable_blocks": self.deformable_blocks,
            "deformable_modulated": self.deformable_modulated,
            "deformable_impl": self.deformable_impl,
        }


BACKBONES = ("resnet50", "resnet101", "small")


def build_backbone(
    name,
    *,
    weights=None,
    freeze_stages=2,
    small_widths=(32, 64, 128, 256),
    small_blocks=(1, 1, 2, 1),
    small_norm="batch",
    deformable_blocks=0,
    deformable_modulated=False,
    deformable_impl="auto",
):
    """Builds a backbone by name and loads its initial weights.

    Args:
        name: `"resnet50"`, `"resnet101"` or `"small"`.
        weights: None (random init), `"imagenet"` (ResNet only) or a local file path (see
            `load_pretrained_weights`; for "small", a weights file saved from a SmallBackbone
            of the same configuration).
        freeze_stages: ResNet only; see `ResNetBackbone`.
        small_widths, small_blocks, small_norm: small backbone only; see `SmallBackbone`.
        deformable_blocks, deformable_modulated, deformable_impl: deformable 3x3 convs in the
            last stage (see the module docstring).

    Returns:
        A `ResNetBackbone` or `SmallBackbone`.
    """
    deformable = dict(
        deformable_blocks=deformable_blocks,
        deformable_modulated=deformable_modulated,
        deformable_impl=deformable_impl,
    )
    if name in ("resnet50", "resnet101"):
        backbone = ResNetBackbone(
            depth=int(name[len("resnet") :]), freeze_stages=freeze_stages, **deformable
        )
    elif name == "small":
        if weights == "imagenet":
            raise ValueError(
                "backbone 'small' is trained from scratch: it has no ImageNet weights "
                "(set model.backbone.weights to null or to a local weights file)"
            )
        backbone = SmallBackbone(
            widths=small_widths, blocks=small_blocks, norm=small_norm, **deformable
        )
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if weights is not None:
        load_pretrained_weights(backbone, weights)
    return backbone


def _keras_resnet(depth, *, weights, include_top=False):
    factory = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}[depth]
    if include_top:
        return factory(include_top=True, weights=weights)
    return factory(include_top=False, weights=weights, input_shape=(None, None, 3))


def _all_layers(model):
    """Name -> layer, descending into nested models (a `.keras` file may wrap the ResNet)."""
    found = {}
    stack = [model]
    while stack:
        current = stack.pop()
        for layer in getattr(current, "layers", []):
            if getattr(layer, "layers", None):
                stack.append(layer)
            found.setdefault(layer.name, layer)
    return found


def _reference_for_weights(backbone, weights):
    """A Keras model holding the source weights (keras.applications layout)."""
    if weights == "imagenet":
        if not isinstance(backbone, ResNetBackbone):
            raise ValueError(
                f"ImageNet weights exist only for ResNet backbones, not {backbone.name!r}"
            )
        try:
            return _keras_resnet(backbone.depth, weights="imagenet")
        except Exception as error:  # get_file raises a bare Exception on network errors
            raise RuntimeError(
                f"could not obtain keras.applications ResNet{backbone.depth} ImageNet weights "
                f"({type(error).__name__}: {error}). Without internet access, download "
                f"'resnet{backbone.depth}_weights_tf_dim_ordering_tf_kernels_notop.h5' elsewhere "
                "(or save keras.applications.ResNet"
                f"{backbone.depth}(include_top=False, weights='imagenet').save_weights("
                "'resnet.weights.h5')) and pass its local path as the weights "
                "(model.backbone.weights=/path/to/file)"
            ) from error
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"backbone weights file {path!r} does not exist (expected 'imagenet', None, or a "
            "local .weights.h5 / .h5 / .keras file in keras.applications' ResNet layout)"
        )
    if path.endswith(".keras"):
        return keras.saving.load_model(path, compile=False)
    if isinstance(backbone, ResNetBackbone):
        errors = []
        for include_top in (False, True):
            reference = _keras_resnet(backbone.depth, weights=None, include_top=include_top)
            try:
                reference.load_weights(path)
                return reference
            except Exception as error:  # a layout mismatch; try the other one
                errors.append(f"include_top={include_top}: {type(error).__name__}: {error}")
        raise ValueError(
            f"weights file {path!r} does not hold keras.applications ResNet{backbone.depth} "
            "weights: " + " | ".join(errors)
        )
    # Small backbone: a weights file saved from a SmallBackbone of the same configuration.
    reference = SmallBackbone.from_config(backbone.get_config())
    reference.load_weights(path)
    return reference


def load_pretrained_weights(backbone, weights):
    """Copies weights into `backbone` by layer name.

    Args:
        backbone: a `ResNetBackbone` or `SmallBackbone`.
        weights: `"imagenet"` (keras.applications' ResNet ImageNet weights, which keras
            downloads once into ~/.keras/models; without internet access this raises a
            RuntimeError that says so and suggests the local-file path), or a path to a
            local `.weights.h5` / legacy `.h5` in keras.applications' ResNet layout
            (with or without the top), or a `.keras` model containing those layers (possibly
            nested). Dilation does not change kernel shapes, so conv5 weights transfer; a
            `DeformableConv2D` takes a plain conv's kernel and bias (its offset conv keeps
            its zero init), or all its weights from a deformable source.

    Returns:
        The list of layer names whose weights were copied.

    Raises:
        RuntimeError: ImageNet weights unobtainable. FileNotFoundError: missing file.
        ValueError: the source lacks a layer of the backbone or a shape differs.
    """
    reference = _reference_for_weights(backbone, weights)
    source = _all_layers(reference)
    copied, missing = [], []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        src = source.get(layer.name)
        plain_into_deformable = (
            isinstance(layer, DeformableConv2D)
            and src is not None
            and not isinstance(src, DeformableConv2D)
        )
        targets = layer.weights[: len(src.weights)] if plain_into_deformable else layer.weights
        if src is None or len(src.weights) != len(targets):
            missing.append(layer.name)
            continue
        for dst_var, src_var in zip(targets, src.weights):
            if tuple(dst_var.shape) != tuple(src_var.shape):
                raise ValueError(
                    f"weights {weights!r}: layer {layer.name!r} variable {dst_var.name!r} has "
                    f"shape {tuple(src_var.shape)} in the source, {tuple(dst_var.shape)} here"
                )
        if plain_into_deformable:
            layer.set_conv_weights(*[v.numpy() for v in src.weights])
        else:
            layer.set_weights([v.numpy() for v in src.weights])
        copied.append(layer.name)
    if missing:
        raise ValueError(
            f"weights {weights!r} lack {len(missing)} layer(s) of {backbone.name!r}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    return copied
