"""RFCN model: outputs, detections, padding, losses, tracing, serialization, builder, distribution."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny_models import make_features, make_images, tiny_backbone, tiny_kwargs, tiny_model

from rfcn_tf.config import ModelConfig
from rfcn_tf.model.backbones import ResNetBackbone, SmallBackbone
from rfcn_tf.model.builder import build_detector
from rfcn_tf.model.detector import LOSS_NAMES, RFCN
from rfcn_tf.model.sections import (
    AnchorsConfig,
    BackboneConfig,
    HeadConfig,
    PostprocessConfig,
    RoIConfig,
    RPNConfig,
)
from rfcn_tf.ops import psroi_pool


def test_call_returns_the_raw_outputs():
    model = tiny_model()
    features = make_features()
    out = model({"images": features["images"], "image_shapes": features["image_shapes"]})
    b, h, w, a, p = 2, 4, 6, 3, 20
    expected = {
        "rpn_objectness_logits": (b, h, w, a),
        "rpn_box_deltas": (b, h, w, 4 * a),
        "anchors": (h * w * a, 4),
        "proposals": (b, p, 4),
        "proposal_scores": (b, p),
        "num_proposals": (b,),
        "rois": (b, p, 4),
        "roi_valid": (b, p),
        "class_logits": (b, p, 4),
        "class_probs": (b, p, 4),
        "box_deltas": (b, p, 1, 4),
    }
    assert {key: tuple(value.shape) for key, value in out.items()} == expected
    np.testing.assert_allclose(out["class_probs"].numpy().sum(-1), 1.0, atol=1e-5)
    # Proposals lie inside each image's real (unpadded) area.
    proposals = out["proposals"].numpy()
    for i, (height, width) in enumerate(features["image_shapes"].numpy()):
        real = proposals[i, : out["num_proposals"].numpy()[i]]
        assert len(real) > 0
        assert (
            real[:, [0, 2]].max() <= height and real[:, [1, 3]].max() <= width and real.min() >= 0
        )
    np.testing.assert_array_equal(
        out["roi_valid"].numpy(), np.arange(p)[None] < out["num_proposals"].numpy()[:, None]
    )


@pytest.mark.parametrize("k,num_classes", [(3, 1), (7, 20), (3, 80)])
def test_detect_shapes_and_padding_for_class_counts(k, num_classes):
    model = tiny_model(ps_k=k, num_classes=num_classes)
    result = model.detect(make_images(2, 64, 80), tf.constant([[64, 80], [50, 60]], tf.int32))
    m = model.postprocessor.config.max_detections
    assert {key: tuple(v.shape) for key, v in result.items()} == {
        "detection_boxes": (2, m, 4),
        "detection_scores": (2, m),
        "detection_classes": (2, m),
        "num_detections": (2,),
    }
    assert result["detection_classes"].dtype == tf.int32
    for i, (height, width) in enumerate([(64, 80), (50, 60)]):
        n = int(result["num_detections"][i])
        assert n > 0  # score_threshold 0: a random model still detects
        classes = result["detection_classes"].numpy()[i]
        boxes = result["detection_boxes"].numpy()[i]
        assert classes[:n].min() >= 1 and classes[:n].max() <= num_classes
        assert not classes[n:].any() and not boxes[n:].any()
        assert boxes[:n, [0, 2]].max() <= height and boxes[:n, [1, 3]].max() <= width


def test_detect_traces_once_for_every_size_and_batch():
    model = tiny_model()
    for batch, height, width in ((1, 64, 64), (2, 96, 128), (1, 80, 48), (2, 32, 160)):
        shapes = tf.constant([[height, width]] * batch, tf.int32)
        model.detect(make_images(batch, height, width), shapes)
    assert model.detect.experimental_get_tracing_count() == 1


def test_batched_padded_image_gives_its_own_detections():
    """Image A alone (padded to 64x96) == image A next to another image in a batch."""
    model = tiny_model()
    a = np.zeros((64, 96, 3), np.uint8)
    a[:48, :80] = make_images(1, 48, 80, seed=1).numpy()[0]
    other = make_images(1, 64, 96, seed=2).numpy()[0]
    shapes = tf.constant([[48, 80], [64, 96]], tf.int32)
    alone = model.detect(tf.constant(a[None]), shapes[:1])
    batched = model.detect(tf.constant(np.stack([a, other])), shapes)
    for key in alone:
        np.testing.assert_allclose(
            alone[key].numpy()[0], batched[key].numpy()[0], rtol=1e-4, atol=1e-4
        )


def test_compute_losses_names_values_and_weights():
    model = tiny_model(rpn_loss_weight=2.0, rfcn_loss_weight=0.5)
    losses = model.compute_losses(make_features(), seed=tf.constant([1, 2]))
    assert tuple(losses) == LOSS_NAMES
    values = {key: float(value) for key, value in losses.items()}
    assert all(np.isfinite(v) for v in values.values())
    assert values["rpn_objectness_loss"] > 0.1 and values["rfcn_class_loss"] > 0.1
    assert values["total_loss"] == pytest.approx(
        2.0 * (values["rpn_objectness_loss"] + values["rpn_box_loss"])
        + 0.5 * (values["rfcn_class_loss"] + values["rfcn_box_loss"]),
        rel=1e-6,
    )
    # A stateless seed makes the sampled losses reproducible.
    again = model.compute_losses(make_features(), seed=tf.constant([1, 2]))
    assert float(again["total_loss"]) == pytest.approx(values["total_loss"], rel=1e-6)


@pytest.mark.parametrize(
    "include,zero,untouched",
    [
        (("rpn",), ("rfcn_class_loss", "rfcn_box_loss"), "rfcn_head"),
        (("rfcn",), ("rpn_objectness_loss", "rpn_box_loss"), "rpn_head"),
    ],
)
def test_include_selects_loss_groups_and_their_gradients(include, zero, untouched):
    model = tiny_model()
    with tf.GradientTape() as tape:
        losses = model.compute_losses(make_features(), include=include)
    for name in zero:
        assert float(losses[name]) == 0.0
    assert float(losses["total_loss"]) > 0.0
    head = getattr(model, untouched)
    shared = [
        v
        for v in model.backbone.trainable_weights
        if not v.path.split("/")[-2].startswith("stage5")
    ]
    grads = tape.gradient(losses["total_loss"], head.trainable_weights + shared)
    assert all(g is None for g in grads[: len(head.trainable_weights)])
    assert all(g is not None for g in grads[len(head.trainable_weights) :])  # conv1..conv4 shared


def test_losses_with_no_ground_truth_and_with_given_proposals():
    model = tiny_model()
    features = make_features()
    empty = dict(features, gt_mask=tf.zeros([2, 3], tf.bool))
    losses = model.compute_losses(empty)
    assert float(losses["rpn_box_loss"]) == 0.0 and float(losses["rfcn_box_loss"]) == 0.0
    assert np.isfinite(float(losses["total_loss"])) and float(losses["rfcn_class_loss"]) > 0
    given = dict(
        features,
        proposals=tf.constant([[[0, 0, 32, 32]] * 5, [[10, 10, 40, 40]] * 5], tf.float32),
        num_proposals=tf.constant([5, 2], tf.int32),
    )
    with tf.GradientTape() as tape:
        losses = model.compute_losses(given, include=("rfcn",))
    grads = tape.gradient(losses["total_loss"], model.rfcn_head.trainable_weights)
    assert all(g is not None for g in grads)
    with pytest.raises(ValueError, match="'mask'"):
        model.compute_losses(features, include=("rpn", "mask"))


def test_train_step_in_tf_function_does_not_retrace_across_sizes():
    model = tiny_model()
    optimizer = keras.optimizers.SGD(0.01)
    spec = {
        "images": tf.TensorSpec([None, None, None, 3], tf.uint8),
        "image_shapes": tf.TensorSpec([None, 2], tf.int32),
        "gt_boxes": tf.TensorSpec([None, None, 4], tf.float32),
        "gt_classes": tf.TensorSpec([None, None], tf.int32),
        "gt_mask": tf.TensorSpec([None, None], tf.bool),
    }

    @tf.function(input_signature=[spec])
    def step(features):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(features, training=True)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(losses["total_loss"], variables), variables))
        return losses

    base = make_features()
    for batch, height, width in ((2, 64, 96), (1, 80, 48), (2, 96, 128)):
        features = dict(
            base,
            images=make_images(batch, height, width),
            image_shapes=tf.constant([[height, width]] * batch, tf.int32),
            gt_boxes=base["gt_boxes"][:batch],
            gt_classes=base["gt_classes"][:batch],
            gt_mask=base["gt_mask"][:batch],
        )
        losses = step(features)
        assert np.isfinite(float(losses["total_loss"]))
    assert step.experimental_get_tracing_count() == 1


def test_config_equals_constructor_kwargs_and_from_config_rebuilds():
    kwargs = tiny_kwargs(seed=7, ohem_nms_iou=0.7, rpn_allowed_border=0.0)
    backbone = tiny_backbone()
    model = RFCN(backbone=backbone, **kwargs)
    config = model.get_config()
    assert set(config) - set(kwargs) == {"backbone", "name", "trainable"}
    # every section comes from the component it configures (not a hand-kept list)
    expected = {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in kwargs.items()
    }
    assert {key: config[key] for key in kwargs} == expected
    assert model.rpn.config == kwargs["rpn"] and model.rpn.anchors_config == kwargs["anchors"]
    assert model.roi_sampler.config == kwargs["roi"] and model.rfcn_head.config == kwargs["head"]
    assert model.postprocessor.config == kwargs["postprocess"]
    assert config["backbone"] == keras.saving.serialize_keras_object(backbone)
    clone = RFCN.from_config(config)
    assert isinstance(clone.backbone, SmallBackbone) and clone.backbone.widths == [8, 8, 16, 16]
    assert clone.get_config() == config
    # Components copy their sections: mutating the caller's config does not reach the model.
    kwargs["anchors"].scales.append(128.0)
    kwargs["head"].k = 5
    assert model.rpn.anchors_config.scales == [16.0, 32.0, 64.0] and model.rfcn_head.config.k == 3


def test_saved_weights_load_into_a_fresh_model_with_identical_outputs(tmp_path):
    model = tiny_model(seed=0)
    images, shapes = make_images(1, 64, 96), tf.constant([[64, 96]], tf.int32)
    path = str(tmp_path / "rfcn.weights.h5")
    model.save_weights(path)
    fresh = tiny_model(seed=123)  # different random init
    before = fresh.detect(images, shapes)["detection_scores"].numpy()
    fresh.load_weights(path)
    expected, got = model.detect(images, shapes), fresh.detect(images, shapes)
    assert not np.allclose(before, expected["detection_scores"].numpy())
    for key in expected:
        np.testing.assert_array_equal(expected[key].numpy(), got[key].numpy())


def test_keras_file_roundtrip(tmp_path):
    model = tiny_model(seed=0)
    path = str(tmp_path / "rfcn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RFCN) and loaded.get_config() == model.get_config()
    images, shapes = make_images(1, 48, 64), tf.constant([[48, 64]], tf.int32)
    a, b = model.detect(images, shapes), loaded.detect(images, shapes)
    np.testing.assert_array_equal(a["detection_boxes"].numpy(), b["detection_boxes"].numpy())


@pytest.mark.skipif(
    not psroi_pool.custom_op_available(),
    reason=f"compiled PS-RoI op not built: {psroi_pool.custom_op_load_error()}",
)
@pytest.mark.parametrize("mode", ["avg", "bilinear"])
def test_custom_and_tf_impl_models_agree(mode):
    twin = tiny_model(psroi_impl="tf", pooling_mode=mode, ps_k=7)
    custom = tiny_model(psroi_impl="custom", pooling_mode=mode, ps_k=7)
    custom.set_weights(twin.get_weights())
    inputs = {
        "images": make_images(2, 64, 96),
        "image_shapes": tf.constant([[64, 96], [48, 80]], tf.int32),
    }
    a, b = twin(inputs), custom(inputs)
    for key in ("class_logits", "box_deltas"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-4, atol=1e-4)


def test_build_detector_hands_every_section_to_its_component():
    cfg = ModelConfig(
        backbone=BackboneConfig(small_widths=[8, 8, 16, 16]),
        anchors=AnchorsConfig(scales=[24.0, 48.0], ratios=[1.0]),
        rpn=RPNConfig(channels=32, allowed_border=0.0, nms_iou=0.6),
        roi=RoIConfig(sampling="balanced"),
        head=HeadConfig(channels=24, k=3, psroi_impl="tf"),
        postprocess=PostprocessConfig(max_detections=7),
        seed=5,
    )
    model = build_detector(cfg, num_classes=5)
    config = model.get_config()
    for field in dataclasses.fields(ModelConfig):
        if field.name == "backbone":
            continue  # the backbone's construction arguments
        value = getattr(cfg, field.name)
        got = config[field.name]
        assert got == (dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
    assert config["num_classes"] == 5
    assert isinstance(model.backbone, SmallBackbone) and model.backbone.widths == [8, 8, 16, 16]
    assert model.rpn_head.channels == 32 and model.rfcn_head.reduce.filters == 24
    # The builder's components copy their sections: later config edits do not reach the model.
    cfg.anchors.scales.append(96.0)
    assert model.rpn.anchors_config.scales == [24.0, 48.0]
    result = model.detect(make_images(1, 64, 64), tf.constant([[64, 64]], tf.int32))
    assert tuple(result["detection_boxes"].shape) == (1, 7, 4)
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    assert any("rfcn_head" in line for line in lines)


def test_build_detector_resnet_and_errors(tmp_path):
    cfg = ModelConfig(backbone=BackboneConfig(name="resnet50", freeze_stages=2))
    model = build_detector(cfg, num_classes=20)
    assert isinstance(model.backbone, ResNetBackbone) and model.backbone.freeze_stages == 2
    assert model.rfcn_head.class_maps.filters == 7 * 7 * 21
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        build_detector(ModelConfig(), num_classes=0)
    missing = str(tmp_path / "missing.weights.h5")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_detector(
            ModelConfig(backbone=BackboneConfig(name="resnet50", weights=missing)), num_classes=2
        )
    with pytest.raises(ValueError, match="'typo'"):
        build_detector(ModelConfig(roi=RoIConfig(sampling="typo")), num_classes=2)
    with pytest.raises(ValueError, match="feature_stride=8 differs"):
        build_detector(ModelConfig(backbone=BackboneConfig(feature_stride=8)), num_classes=2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policies_keep_float32_outputs(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = tiny_model()
        assert model.rfcn_head.class_maps.compute_dtype == policy.split("_")[1]
        assert model.backbone.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
        with tf.GradientTape() as tape:
            losses = model.compute_losses(make_features())
        grads = tape.gradient(losses["total_loss"], model.trainable_variables)
        assert all(v.dtype == tf.float32 for v in losses.values())
        assert np.isfinite(float(losses["total_loss"])) and all(g is not None for g in grads)
        result = model.detect(make_images(1, 64, 64), tf.constant([[64, 64]], tf.int32))
        assert (
            result["detection_boxes"].dtype == tf.float32
            and result["detection_scores"].dtype == tf.float32
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_propose_returns_the_rpn_proposals_with_chosen_counts():
    model = tiny_model()
    features = make_features()
    test_counts = model.propose(features)
    assert tuple(test_counts["proposals"].shape) == (2, model.rpn.config.post_nms_top_n_test, 4)
    train_counts = model.propose(features, training=False, proposal_counts="train")
    assert tuple(train_counts["proposals"].shape) == (2, model.rpn.config.post_nms_top_n_train, 4)
    assert tuple(train_counts["scores"].shape) == (2, model.rpn.config.post_nms_top_n_train)
    out = model({"images": features["images"], "image_shapes": features["image_shapes"]})
    np.testing.assert_array_equal(test_counts["proposals"].numpy(), out["proposals"].numpy())
    np.testing.assert_array_equal(
        test_counts["num_proposals"].numpy(), out["num_proposals"].numpy()
    )
    with pytest.raises(ValueError, match="'val'"):
        model.propose(features, proposal_counts="val")
