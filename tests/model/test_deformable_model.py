"""Deformable R-FCN in the model (Dai et al., ICCV 2017): `model.head.pooling_mode: deformable`
and `model.backbone.deformable_blocks`. At initialization (zero offsets) each equals its plain
counterpart exactly; with offsets they differ and train; the config rejects what the op cannot
do; a deformable model exports to a stock-op SavedModel whose signatures serve what the
in-process model (compiled ops) detects, and `rfcn_tf.load` serves both the run and the export.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny_models import make_features, make_images, tiny_backbone, tiny_kwargs

import rfcn_tf
from rfcn_tf.config import load_config
from rfcn_tf.errors import ConfigError
from rfcn_tf.model import backbones
from rfcn_tf.model.backbones import ResNetBackbone, SmallBackbone
from rfcn_tf.model.deformable import DeformableConv2D, DeformablePSRoIPooling
from rfcn_tf.model.detector import RFCN
from rfcn_tf.model.rfcn_head import RFCNHead
from rfcn_tf.model.sections import HeadConfig

CLASS_NAMES = ["circle", "square", "triangle"]
# RoIs partly outside the 8x12 (128x192 px) map, one tiny, one covering everything.
ROIS = tf.constant(
    [
        [[8.0, 8.0, 72.0, 100.0], [-20.0, 150.0, 60.0, 230.0], [40.0, 40.0, 43.0, 44.0]],
        [[0.0, 0.0, 128.0, 192.0], [90.0, -10.0, 140.0, 50.0], [30.5, 70.25, 99.0, 160.0]],
    ]
)


def _copy_weights(source, target):
    """Copies every layer's weights by name; a DeformableConv2D takes a plain conv's kernel."""
    for layer in source.layers:
        if not layer.weights:
            continue
        dst = target.get_layer(layer.name)
        if isinstance(dst, DeformableConv2D) and not isinstance(layer, DeformableConv2D):
            dst.set_conv_weights(*layer.get_weights())
        else:
            dst.set_weights(layer.get_weights())


def _heads(class_offsets, impl="custom"):
    features = tf.random.stateless_normal([2, 8, 12, 6], [1, 2])
    keras.utils.set_random_seed(0)
    plain = RFCNHead(
        num_classes=3,
        init_stddev=0.5,
        config=HeadConfig(channels=8, k=3, pooling_mode="bilinear", psroi_impl=impl),
    )
    deformable = RFCNHead(
        num_classes=3,
        init_stddev=0.5,
        config=HeadConfig(
            channels=8,
            k=3,
            pooling_mode="deformable",
            psroi_impl=impl,
            deformable_class_offsets=class_offsets,
        ),
    )
    plain.build(features.shape)
    deformable.build(features.shape)
    for name in ("reduce", "class_maps", "box_maps"):
        getattr(deformable, name).set_weights(getattr(plain, name).get_weights())
    return features, plain, deformable


@pytest.mark.parametrize("class_offsets", [False, True])
def test_deformable_head_equals_bilinear_at_init_then_moves_and_trains(class_offsets):
    features, plain, deformable = _heads(class_offsets)
    assert isinstance(deformable.class_pool, DeformablePSRoIPooling)
    groups = 4 if class_offsets else 1  # C + 1 offset fields for the class maps, or one
    assert deformable.class_pool.offset_conv.filters == 3 * 3 * 2 * groups
    assert deformable.box_pool.offset_conv.filters == 3 * 3 * 2
    expected, got = plain(features, ROIS), deformable(features, ROIS)
    for a, b in zip(expected, got):
        # Zero offsets sample the plain bilinear points; the compiled plain op sums them with
        # fused multiply-adds (AVX2/FMA channel loops), so the two agree to float rounding.
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    # Nonzero offsets (per class when per-class) move the bins: the outputs change, and the
    # offset convs get gradients.
    for pool in (deformable.class_pool, deformable.box_pool):
        conv = pool.offset_conv
        conv.kernel.assign(tf.random.stateless_normal(conv.kernel.shape, [3, 4]) * 0.3)
        conv.bias.assign(tf.random.stateless_normal(conv.bias.shape, [5, 6]))
    with tf.GradientTape() as tape:
        logits, deltas = deformable(features, ROIS)
        loss = tf.reduce_sum(logits**2) + tf.reduce_sum(deltas**2)
    for a, b in ((logits, expected[0]), (deltas, expected[1])):
        assert np.abs(a.numpy() - b.numpy()).max() > 0.05 * np.abs(b.numpy()).max()
    weights = (
        deformable.class_pool.offset_conv.trainable_weights
        + deformable.box_pool.offset_conv.trainable_weights
    )
    assert all(np.any(g.numpy()) for g in tape.gradient(loss, weights))
    # The stock-op twin gives the same numbers (the export path).
    _, _, twin = _heads(class_offsets, impl="tf")
    for pool, source in (
        (twin.class_pool, deformable.class_pool),
        (twin.box_pool, deformable.box_pool),
    ):
        pool.set_weights(source.get_weights())
    for a, b in zip(twin(features, ROIS), (logits, deltas)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.head.grid=[3,2]", "model.head.grid"),
        ("model.head.sampling_ratio=0", "model.head.sampling_ratio"),
        ("model.head.trans_std=-0.1", "model.head.trans_std"),
        ("model.backbone.deformable_blocks=2", "model.backbone.deformable_blocks"),
    ],
)
def test_config_names_what_deformable_cannot_do(override, key):
    overrides = ["model.head.pooling_mode=deformable", override]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("shapes_tiny", overrides)  # small_blocks[3] = 1: deformable_blocks <= 1


def test_head_rejects_a_rectangular_grid_for_deformable():
    with pytest.raises(ConfigError, match=r"model\.head\.grid"):
        RFCNHead(num_classes=2, config=HeadConfig(grid=[3, 2], pooling_mode="deformable"))


def test_deformable_small_backbone_equals_plain_at_init():
    keras.utils.set_random_seed(0)
    plain = SmallBackbone(widths=[8, 8, 16, 16], blocks=[1, 1, 1, 2])
    deformable = SmallBackbone(
        widths=[8, 8, 16, 16], blocks=[1, 1, 1, 2], deformable_blocks=1, deformable_modulated=True
    )
    assert not isinstance(deformable.get_layer("stage5_block1_2_conv"), DeformableConv2D)
    layer = deformable.get_layer("stage5_block2_2_conv")  # the LAST block
    assert isinstance(layer, DeformableConv2D) and layer.modulated
    _copy_weights(plain, deformable)
    images = make_images(2, 64, 96)
    for a, b in zip(plain(images), deformable(images)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    clone = SmallBackbone.from_config(deformable.get_config())
    assert isinstance(clone.get_layer("stage5_block2_2_conv"), DeformableConv2D)


@pytest.mark.slow
def test_deformable_resnet_loads_plain_weights_by_name_and_equals_it(monkeypatch):
    """ResNet-50 conv5 res5a/b/c deformable: the name-based loading copies the plain 3x3 convs'
    kernel and bias (set_conv_weights) and leaves the zero offsets: same features."""
    keras.utils.set_random_seed(0)
    plain = ResNetBackbone(depth=50, freeze_stages=0)
    monkeypatch.setattr(backbones, "_reference_for_weights", lambda backbone, weights: plain)
    deformable = backbones.build_backbone("resnet50", weights="plain", deformable_blocks=3)
    names = [f"conv5_block{b}_2_conv" for b in (1, 2, 3)]
    assert all(isinstance(deformable.get_layer(n), DeformableConv2D) for n in names)
    assert not isinstance(deformable.get_layer("conv4_block6_2_conv"), DeformableConv2D)
    for name in names:
        np.testing.assert_array_equal(
            deformable.get_layer(name).kernel.numpy(), plain.get_layer(name).kernel.numpy()
        )
    images = make_images(1, 64, 64)
    for a, b in zip(plain(images), deformable(images)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)


def test_deformable_detector_trains_every_offset_branch():
    keras.utils.set_random_seed(0)
    model = RFCN(
        backbone=SmallBackbone(
            widths=[8, 8, 16, 16], blocks=[1, 1, 1, 1], deformable_blocks=1, deformable_impl="tf"
        ),
        **tiny_kwargs(**{"head.pooling_mode": "deformable", "head.deformable_class_offsets": True}),
    )
    with tf.GradientTape() as tape:
        losses = model.compute_losses(make_features(), seed=1)
    offsets = [v for v in model.trainable_variables if "offset_conv" in v.path]
    assert len(offsets) == 6  # backbone conv, class pool, box pool: kernel + bias each
    grads = tape.gradient(losses["total_loss"], offsets)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert any(np.any(g.numpy()) for g in grads)
    clone = RFCN.from_config(model.get_config())
    assert clone.rfcn_head.config.pooling_mode == "deformable"
    assert tiny_backbone().get_config()["deformable_blocks"] == 0


DEFORMABLE = [
    "model.head.pooling_mode=deformable",
    "model.head.deformable_class_offsets=true",
    "model.backbone.deformable_blocks=1",
    "model.backbone.deformable_modulated=true",
    "model.rpn.pre_nms_top_n_test=300",
    "model.rpn.post_nms_top_n_test=50",
    "model.postprocess.max_detections=30",
]


def _deformable_model(impl):
    """shapes_tiny's model, deformable head and stage 5, with nonzero offsets (so the export
    must carry the deformable sampling) and spread class / objectness logits (no ties)."""
    cfg = load_config("shapes_tiny", [*DEFORMABLE, f"model.head.psroi_impl={impl}"])
    from rfcn_tf.model.builder import build_detector

    keras.utils.set_random_seed(0)
    model = build_detector(cfg.model, num_classes=len(CLASS_NAMES))
    for i, variable in enumerate(model.variables):
        if variable.path.endswith(("rfcn_class_maps/kernel", "rpn_objectness/kernel")):
            variable.assign(variable * 100.0)
        elif "offset_conv" in variable.path:
            variable.assign(tf.random.stateless_normal(variable.shape, [7, i]) * 0.05)
    return cfg, model


@pytest.mark.slow
def test_deformable_export_is_stock_ops_every_signature_and_onnx_serve_detect(tmp_path):
    from rfcn_tf.export.saved_model import export_saved_model, saved_model_op_types
    from rfcn_tf.run_dir import write_run_files

    cfg, model = _deformable_model("custom")  # in-process: the compiled ops
    _, twin = _deformable_model("tf")  # what the export builds (psroi_impl: tf)
    twin.set_weights(model.get_weights())
    version = export_saved_model(
        twin,
        class_names=CLASS_NAMES,
        out_dir=tmp_path / "export",
        model_name="rfcn",
        version=1,
        min_size=256,
        max_size=256,
        verify=False,
        measure_batching=False,
    )
    ops = saved_model_op_types(version)
    assert not any(op.startswith("Rfcn") for op in ops), sorted(op for op in ops if "Rfcn" in op)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 60, (256, 256, 3), dtype=np.uint8)
    pixels[40:120, 60:200] = (220, 40, 40)
    images = tf.constant(pixels[None])
    expected = model.detect(images, tf.constant([[256, 256]], tf.int32))
    n = int(expected["num_detections"][0])
    assert n > 0
    loaded = tf.saved_model.load(str(version))
    png = tf.io.encode_png(images[0])
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[png.numpy()])
                )
            }
        )
    )
    calls = {
        "serving_default": {"input_tensor": images},
        "serving_encoded": {"encoded_image_string_tensor": png[None]},
        "tf_example": {"tf_example": tf.constant([example.SerializeToString()])},
        "serving_custom": {
            "input_tensor": images,
            "score_threshold": tf.constant(cfg.model.postprocess.score_threshold),
            "iou_threshold": tf.constant(cfg.model.postprocess.nms_iou),
            "max_detections": tf.constant(30),
        },
    }
    for key, kwargs in calls.items():
        served = loaded.signatures[key](**kwargs)
        assert int(served["num_detections"][0]) == n, key
        np.testing.assert_allclose(
            served["detection_scores"][0, :n],
            expected["detection_scores"][0, :n],
            rtol=1e-4,
            atol=1e-5,
            err_msg=key,
        )
        np.testing.assert_array_equal(
            served["detection_classes"][0, :n].numpy().astype(int),
            expected["detection_classes"][0, :n],
            err_msg=key,
        )
        np.testing.assert_allclose(
            served["detection_boxes"][0, :n] * 256.0,
            expected["detection_boxes"][0, :n],
            atol=1e-2,
            err_msg=key,
        )

    # ONNX (tf2onnx, opset 17): onnxruntime detects what the SavedModel does.
    from rfcn_tf.export.onnx import export_onnx, verify_onnx

    onnx_path = export_onnx(version, output_path=tmp_path / "model.onnx", loaded=loaded)
    result = verify_onnx(onnx_path, version, images=[pixels[None]], atol=1e-3, loaded=loaded)
    assert result.detections == n

    # rfcn_tf.load: the run folder (checkpoint, model rebuilt from its config.yaml) and the
    # SavedModel detect the same.
    work = str(tmp_path / "run")
    write_run_files(work, cfg, class_names=CLASS_NAMES)
    checkpoint = tf.train.Checkpoint(
        model=model, step=tf.Variable(1, dtype=tf.int64), num_classes=tf.Variable(len(CLASS_NAMES))
    )
    tf.train.CheckpointManager(checkpoint, os.path.join(work, "checkpoints"), max_to_keep=1).save(
        checkpoint_number=1
    )
    from_run = rfcn_tf.load(work).predict(pixels, score_threshold=0.0)
    from_export = rfcn_tf.load(str(version)).predict(pixels, score_threshold=0.0)
    assert len(from_run.scores) == len(from_export.scores) > 0
    np.testing.assert_allclose(from_run.scores, from_export.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_run.boxes, from_export.boxes, atol=1e-2)


@pytest.mark.slow
def test_voc07_resnet101_dcn_preset_builds_the_reference_layout():
    from rfcn_tf.model.builder import build_detector

    cfg = load_config("voc07_resnet101_dcn", ["model.backbone.weights=null"])
    model = build_detector(cfg.model, num_classes=20)
    backbone = model.backbone
    for block in (1, 2, 3):  # res5a/b/c: deformable, dilation 2
        layer = backbone.get_layer(f"conv5_block{block}_2_conv")
        assert isinstance(layer, DeformableConv2D) and not layer.modulated
        assert layer.dilation_rate == (2, 2)
    head = model.rfcn_head
    assert head.class_pool.offset_groups == 21 and head.box_pool.offset_groups == 1
    assert (
        head.class_pool.output_size,
        head.class_pool.sampling_ratio,
        head.class_pool.trans_std,
    ) == (7, 4, 0.1)
