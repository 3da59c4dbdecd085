"""Backbones: keras.applications name/weight compatibility, dilation, freezing, small net."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.model import backbones
from rfcn_tf.model.backbones import (
    ImagePreprocessing,
    ResNetBackbone,
    SmallBackbone,
    build_backbone,
    load_pretrained_weights,
)


def _randomize_batchnorm(model, seed=0):
    """keras.applications' fresh BN layers are identities; random stats make transfer visible."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, var.shape).astype("float32"),
                ]
            )


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
    """keras.applications.ResNet50 (random init, random BN stats) and its saved weights."""
    reference = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    _randomize_batchnorm(reference)
    path = str(tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5")
    reference.save_weights(path)
    return reference, path


def _images(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, shape), tf.uint8)


def test_preprocessing_matches_keras_applications_caffe_mode():
    images = _images([2, 5, 7, 3])
    ours = ImagePreprocessing(mode="caffe")(images)
    expected = keras.applications.resnet.preprocess_input(images.numpy().astype("float32"))
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)
    scaled = ImagePreprocessing(mode="tf")(tf.constant([[[[0, 255, 127]]]], tf.uint8))
    np.testing.assert_allclose(scaled.numpy().ravel(), [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-6)
    with pytest.raises(ValueError, match="'torch'"):
        ImagePreprocessing(mode="torch")


def test_resnet50_loads_keras_applications_weights_and_matches_its_features(keras_resnet50):
    reference, path = keras_resnet50
    ours = ResNetBackbone(depth=50, dilate_conv5=False)
    copied = load_pretrained_weights(ours, path)
    # Every weighted layer of keras.applications' ResNet50 exists here under the same name.
    ref_weighted = {layer.name for layer in reference.layers if layer.weights}
    assert set(copied) == ref_weighted
    for name in ("conv1_conv", "conv4_block6_3_conv", "conv5_block3_3_bn"):
        for mine, theirs in zip(ours.get_layer(name).weights, reference.get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    images = _images([1, 64, 96, 3])
    conv4 = keras.Model(reference.input, reference.get_layer("conv4_block6_out").output)
    preprocessed = keras.applications.resnet.preprocess_input(images.numpy().astype("float32"))
    rpn_features, head_features = ours(images)
    np.testing.assert_allclose(
        rpn_features.numpy(), conv4(preprocessed).numpy(), rtol=1e-4, atol=1e-4
    )
    # Undilated conv5 is keras.applications' conv5 (stride 32).
    np.testing.assert_allclose(
        head_features.numpy(), reference(preprocessed).numpy(), rtol=1e-4, atol=1e-4
    )


def test_dilated_resnet50_keeps_stride_16_and_same_kernels(keras_resnet50):
    reference, path = keras_resnet50
    ours = ResNetBackbone(depth=50)  # dilate_conv5=True
    load_pretrained_weights(ours, path)
    np.testing.assert_array_equal(
        ours.get_layer("conv5_block2_2_conv").kernel.numpy(),
        reference.get_layer("conv5_block2_2_conv").kernel.numpy(),
    )
    assert ours.get_layer("conv5_block1_1_conv").strides == (1, 1)
    assert ours.get_layer("conv5_block2_2_conv").dilation_rate == (2, 2)
    for height, width in ((64, 96), (80, 48), (120, 200)):
        rpn_features, head_features = ours(_images([1, height, width, 3]))
        expected = (1, -(-height // 16), -(-width // 16))
        assert tuple(rpn_features.shape) == expected + (1024,)
        assert tuple(head_features.shape) == expected + (2048,)


def test_keras_model_file_with_nested_resnet_transfers(keras_resnet50, tmp_path):
    reference, _ = keras_resnet50
    inputs = keras.Input((None, None, 3))
    wrapped = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(reference(inputs)))
    path = str(tmp_path / "classifier.keras")
    wrapped.save(path)
    ours = ResNetBackbone(depth=50)
    load_pretrained_weights(ours, path)
    np.testing.assert_array_equal(
        ours.get_layer("conv3_block4_2_conv").kernel.numpy(),
        reference.get_layer("conv3_block4_2_conv").kernel.numpy(),
    )


def test_imagenet_weights_go_through_keras_applications(monkeypatch, keras_resnet50):
    reference, path = keras_resnet50
    calls = []

    def fake_resnet50(*, include_top, weights, input_shape=None):
        calls.append((include_top, weights))
        return reference  # stands in for the downloaded model (tests never download)

    monkeypatch.setattr(keras.applications, "ResNet50", fake_resnet50)
    ours = build_backbone("resnet50", weights="imagenet")
    assert calls == [(False, "imagenet")]
    np.testing.assert_array_equal(
        ours.get_layer("conv1_conv").kernel.numpy(),
        reference.get_layer("conv1_conv").kernel.numpy(),
    )


def test_imagenet_weights_without_internet_say_so(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://...: None -- [Errno -3] name resolution")

    monkeypatch.setattr(keras.applications, "ResNet101", offline)
    backbone = ResNetBackbone(depth=101)
    with pytest.raises(RuntimeError, match=r"ResNet101 ImageNet weights.*local path"):
        load_pretrained_weights(backbone, "imagenet")


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_bad_weight_sources_name_the_problem(tmp_path):
    backbone = ResNetBackbone(depth=50)
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        load_pretrained_weights(backbone, str(tmp_path / "nope.weights.h5"))
    small = SmallBackbone(widths=(8, 8, 8, 8))
    path = str(tmp_path / "small.weights.h5")
    small.save_weights(path)
    with pytest.raises(ValueError, match="small.weights.h5"):
        load_pretrained_weights(backbone, path)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("small", weights="imagenet")
    with pytest.raises(ValueError, match="'resnet18'"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="depth.*152"):
        ResNetBackbone(depth=152)


def test_resnet101_layer_names_match_keras_applications():
    ours = ResNetBackbone(depth=101)
    reference = keras.applications.ResNet101(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    ours_weighted = {
        layer.name: [tuple(v.shape) for v in layer.weights]
        for layer in ours.layers
        if layer.weights
    }
    ref_weighted = {
        layer.name: [tuple(v.shape) for v in layer.weights]
        for layer in reference.layers
        if layer.weights
    }
    assert ours_weighted == ref_weighted
    assert "conv4_block23_3_conv" in ours_weighted


@pytest.mark.parametrize("freeze_stages", [0, 2, 5])
def test_freeze_stages_and_frozen_batchnorm(freeze_stages):
    backbone = ResNetBackbone(depth=50, freeze_stages=freeze_stages)
    trainable = {v.path.split("/")[-2] for v in backbone.trainable_weights}
    assert not any(name.endswith("_bn") for name in trainable)  # BN frozen
    frozen_prefixes = ("conv1_", "conv2_", "conv3_", "conv4_", "conv5_")[:freeze_stages]
    assert (
        not any(name.startswith(frozen_prefixes) for name in trainable) if frozen_prefixes else True
    )
    expected_convs = sum(
        1
        for layer in backbone.layers
        if isinstance(layer, keras.layers.Conv2D)
        and not layer.name.startswith(frozen_prefixes or ("#",))
    )
    assert len(backbone.trainable_weights) == 2 * expected_convs  # kernel + bias each
    images = _images([1, 32, 32, 3])
    a = backbone(images, training=True)[1]
    b = backbone(images, training=False)[1]
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # inference-mode BN either way


def test_resnet_config_equals_constructor_kwargs():
    kwargs = dict(
        depth=50,
        freeze_stages=3,
        freeze_batchnorm=True,
        dilate_conv5=True,
        preprocessing="caffe",
        deformable_blocks=0,
        deformable_modulated=False,
        deformable_impl="auto",
    )
    backbone = ResNetBackbone(**kwargs)
    config = backbone.get_config()
    assert {key: config[key] for key in kwargs} == kwargs
    assert set(config) - set(kwargs) == {"name", "trainable"}
    clone = ResNetBackbone.from_config(config)
    assert clone.freeze_stages == 3 and len(clone.trainable_weights) == len(
        backbone.trainable_weights
    )


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_small_backbone_shapes_config_and_training_mode(norm):
    kwargs = dict(widths=[8, 16, 24, 32], blocks=[1, 2, 1, 1], norm=norm, preprocessing="tf")
    backbone = SmallBackbone(**kwargs)
    config = backbone.get_config()
    assert {key: config[key] for key in kwargs} == kwargs
    for height, width in ((64, 64), (48, 80), (50, 33)):
        rpn_features, head_features = backbone(_images([2, height, width, 3]))
        expected = (2, -(-height // 16), -(-width // 16))
        assert tuple(rpn_features.shape) == expected + (24,)
        assert tuple(head_features.shape) == expected + (32,)
    assert backbone.get_layer("stage5_block1_2_conv").dilation_rate == (2, 2)
    # Everything trains from scratch, normalization included.
    names = {v.path for v in backbone.trainable_weights}
    assert any("stem_norm" in name for name in names)
    clone = SmallBackbone.from_config(config)
    clone.set_weights(backbone.get_weights())
    images = _images([1, 32, 48, 3], seed=3)
    np.testing.assert_allclose(clone(images)[1].numpy(), backbone(images)[1].numpy(), atol=1e-6)
    if norm == "batch":  # batch statistics in training mode differ from the moving ones
        assert not np.allclose(
            backbone(images, training=True)[1].numpy(), backbone(images)[1].numpy()
        )


def test_small_backbone_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"widths must be 4.*\[8, 8\]"):
        SmallBackbone(widths=(8, 8))
    with pytest.raises(ValueError, match="'layer'"):
        SmallBackbone(norm="layer")
    with pytest.raises(ValueError, match="divisible by 8"):
        SmallBackbone(widths=(4, 8, 8, 8), norm="group")


def test_small_backbone_local_weights_roundtrip(tmp_path):
    source = build_backbone("small", small_widths=(8, 8, 16, 16), small_blocks=(1, 1, 1, 1))
    path = str(tmp_path / "small.weights.h5")
    source.save_weights(path)
    target = build_backbone(
        "small", weights=path, small_widths=(8, 8, 16, 16), small_blocks=(1, 1, 1, 1)
    )
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert backbones.BACKBONES == ("resnet50", "resnet101", "small")


def test_subsample_then_1x1_conv_equals_a_strided_1x1_conv():
    x = tf.random.normal([2, 7, 10, 5])
    kernel = tf.random.normal([1, 1, 5, 4])
    strided = tf.nn.conv2d(x, kernel, 2, "VALID")
    ours = tf.nn.conv2d(backbones.Subsample2D(2)(x), kernel, 1, "VALID")
    assert tuple(ours.shape) == (2, 4, 5, 4)
    np.testing.assert_allclose(ours.numpy(), strided.numpy(), atol=1e-5)
    assert backbones.Subsample2D(3).compute_output_shape((None, 7, None, 5)) == (None, 3, None, 5)


_TRAIN_STEP_SCRIPT = """
import tensorflow as tf, keras
from rfcn_tf.model.backbones import ResNetBackbone, SmallBackbone
for backbone in (SmallBackbone(widths=[8, 8, 16, 16], blocks=[1, 1, 1, 1]), ResNetBackbone(depth=50, freeze_stages=0)):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def step(images):
        with tf.GradientTape() as tape:
            rpn, head = backbone(images, training=True)
            loss = tf.reduce_mean(rpn ** 2) + tf.reduce_mean(head ** 2)
        grads = tape.gradient(loss, backbone.trainable_variables)
        for variable, grad in zip(backbone.trainable_variables, grads):
            variable.assign_sub(1e-4 * grad)
        return loss
    for batch, height, width in ((2, 64, 96), (1, 80, 48), (2, 48, 32)):
        step(tf.zeros([batch, height, width, 3], tf.uint8) + 9)
    assert step.experimental_get_tracing_count() == 1
print("OK")
"""


def test_training_steps_on_several_sizes_in_one_graph_do_not_crash():
    """Regression: strided 1x1 convs made oneDNN's filter gradient segfault on a 2nd size."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_STEP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_preprocessing_and_subsample_configs_equal_their_kwargs():
    for layer, kwargs in (
        (ImagePreprocessing(mode="tf"), {"mode": "tf"}),
        (backbones.Subsample2D(stride=3), {"stride": 3}),
    ):
        config = layer.get_config()
        assert {key: config[key] for key in kwargs} == kwargs
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(clone) is type(layer) and clone.get_config() == config
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        backbones.Subsample2D(stride=0)
