"""The detector learns: overfitting 4 synthetic images with the small backbone.

The whole model (backbone from scratch, RPN, proposals, OHEM head) is trained with its own
compute_losses in one tf.function (Adam, cosine decay over 200 steps, 250 for deformable),
with PSRoIAlign ("bilinear", class-agnostic and class-specific boxes), the paper's integer-cell
"avg" PS-RoI pooling and deformable PS-RoI pooling. Pass criteria: VOC AP@0.5 = 1.0 on the 4
training images in every case; the total loss falls by at least 10x with bilinear and
deformable pooling and by at least 3x with avg pooling. Measured under pytest with seed 0
(runs repeat bit for bit): bilinear 19.8x, class-specific 19.7x, avg 8.4x in 200 steps,
deformable 21.8x in 250 (outside pytest: 13.3x in 200, too close to 10x; in 150 steps three
of the four fail a criterion). The avg variant plateaus higher
because on these 8x8 feature maps (128 px / 16) a 3x3 grid over a 40 px RoI has bins smaller
than one cell: RoIs just above and just below the 0.5 IoU foreground threshold pool the same
cells, and OHEM keeps selecting exactly those ambiguous RoIs.
"""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.data.sources.shapes import shapes_source
from rfcn_tf.evaluation.voc_metrics import evaluate_voc
from rfcn_tf.model.backbones import SmallBackbone
from rfcn_tf.model.detector import RFCN
from rfcn_tf.model.sections import (
    AnchorsConfig,
    HeadConfig,
    PostprocessConfig,
    RoIConfig,
    RPNConfig,
)

IMAGE_SIZE = 128
MAX_BOXES = 3
CLASSES = ("circle", "square", "triangle")
STEPS = 200
DEFORMABLE_STEPS = 250  # the deformable offsets start at 0 and need the extra steps (see above)


def _four_images():
    """4 shapes images (uint8 [4, S, S, 3]) and padded ground truth in model conventions."""
    dataset, _ = shapes_source(
        split="validation",
        image_size=IMAGE_SIZE,
        classes=CLASSES,
        num_val=4,
        min_objects=1,
        max_objects=MAX_BOXES,
        min_size=0.2,
        max_size=0.45,
    )
    images, boxes, classes, mask = [], [], [], []
    for example in dataset:
        n = int(tf.shape(example["labels"])[0])
        assert 1 <= n <= MAX_BOXES
        images.append(example["image"].numpy())
        padded = -np.ones((MAX_BOXES, 4), np.float32)
        padded[:n] = example["boxes"].numpy() * IMAGE_SIZE  # normalized -> pixels
        labels = -np.ones(MAX_BOXES, np.int32)
        labels[:n] = example["labels"].numpy() + 1  # dataset 0..C-1 -> model 1..C
        boxes.append(padded)
        classes.append(labels)
        mask.append(labels > 0)
    return {
        "images": tf.constant(np.stack(images)),
        "image_shapes": tf.constant([[IMAGE_SIZE, IMAGE_SIZE]] * 4, tf.int32),
        "gt_boxes": tf.constant(np.stack(boxes)),
        "gt_classes": tf.constant(np.stack(classes)),
        "gt_mask": tf.constant(np.stack(mask)),
    }


def _voc_ap(model, features):
    result = model.detect(features["images"], features["image_shapes"])
    groundtruths, detections = [], []
    for i in range(4):
        mask = features["gt_mask"].numpy()[i]
        groundtruths.append(
            {
                "image_id": i,
                "boxes": features["gt_boxes"].numpy()[i][mask],
                "classes": features["gt_classes"].numpy()[i][mask],
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
            }
        )
        n = int(result["num_detections"][i])
        detections.append(
            {
                "image_id": i,
                "boxes": result["detection_boxes"].numpy()[i, :n],
                "scores": result["detection_scores"].numpy()[i, :n],
                "classes": result["detection_classes"].numpy()[i, :n],
            }
        )
    return evaluate_voc(groundtruths, detections, num_classes=len(CLASSES), iou_threshold=0.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pooling_mode,min_loss_ratio,class_agnostic_boxes",
    [
        ("bilinear", 10.0, True),
        ("avg", 3.0, True),
        ("bilinear", 10.0, False),  # class-specific boxes: 4k^2 C box maps
        # Deformable R-FCN: deformable PS-RoI pooling (per-class offsets) and a deformable
        # stage-5 3x3 conv (DCN v1)
        ("deformable", 10.0, True),
    ],
)
def test_overfits_four_images_loss_drops_and_ap50_is_1(
    pooling_mode, min_loss_ratio, class_agnostic_boxes
):
    keras.utils.set_random_seed(0)
    features = _four_images()
    deformable = pooling_mode == "deformable"
    model = RFCN(
        backbone=SmallBackbone(
            widths=[16, 32, 64, 64], blocks=[1, 1, 1, 1], deformable_blocks=int(deformable)
        ),
        num_classes=len(CLASSES),
        anchors=AnchorsConfig(scales=[24.0, 48.0, 96.0], ratios=[1.0]),
        rpn=RPNConfig(
            channels=64,
            pre_nms_top_n_train=300,
            post_nms_top_n_train=64,
            pre_nms_top_n_test=200,
            post_nms_top_n_test=32,
            batch_size_per_image=64,
        ),
        roi=RoIConfig(batch_size_per_image=32),
        head=HeadConfig(
            channels=128,
            k=3,
            pooling_mode=pooling_mode,
            class_agnostic_boxes=class_agnostic_boxes,
            deformable_class_offsets=deformable,
        ),
        postprocess=PostprocessConfig(score_threshold=0.05, max_detections=20),
    )
    steps = DEFORMABLE_STEPS if deformable else STEPS
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps))

    @tf.function
    def step(features, seed):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(features, training=True, seed=seed)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(losses["total_loss"], variables), variables))
        return losses

    start = time.perf_counter()
    history = []
    for i in range(steps):
        losses = step(features, tf.constant([0, i], tf.int32))
        history.append(float(losses["total_loss"]))
    elapsed = time.perf_counter() - start
    initial, final = history[0], float(np.mean(history[-10:]))
    metrics = _voc_ap(model, features)
    print(
        f"{pooling_mode}: loss {initial:.3f} -> {final:.4f} ({initial / final:.1f}x) in {steps} steps, "
        f"{elapsed:.1f} s; AP50 {metrics['ap']} mAP {metrics['mAP']:.3f}"
    )
    assert initial / final >= min_loss_ratio, history[::20]
    assert metrics["mAP"] == pytest.approx(1.0), metrics["ap"]
    if deformable:  # the offsets learned (backbone conv, class and box pooling branches)
        offsets = [v for v in model.trainable_variables if "offset_conv/kernel" in v.path]
        assert len(offsets) == 3 and all(np.abs(v.numpy()).max() > 1e-4 for v in offsets)
