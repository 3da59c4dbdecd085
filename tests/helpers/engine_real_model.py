"""The real small R-FCN detector in a deterministic setting, for the distribution test.

Deterministic: every anchor of a 64x64 image is sampled (96 anchors < rpn_batch_size, so the
random keys of balanced RPN sampling cannot matter) and OHEM picks the hardest RoIs (no
randomness). The global batch holds the same image twice, so the model's batch-normalized
losses (means over the sampled anchors / RoIs of the whole batch) and BatchNorm statistics are
the same over 1 or 2 images: one device with batch 2 and 2 replicas with 1 image each must
take the same step. (Different images per replica are covered with the stand-in model.)
"""

from __future__ import annotations

import numpy as np

from helpers.engine_standin import replica_dataset_fn
from helpers.tiny_models import preset_detector

OVERRIDES = [
    "model.backbone.small_widths=[8,16,16,32]",
    "model.anchors.scales=[16.0,32.0]",
    "model.rpn.channels=16",
    "model.head.channels=32",
    "model.rpn.pre_nms_top_n_train=96",
    "model.rpn.post_nms_top_n_train=32",
    "model.rpn.batch_size_per_image=256",
    "model.roi.batch_size_per_image=8",
    "model.roi.sampling=ohem",
    "model.head.k=3",
]
SIDE = 64


def build_real_model():
    return preset_detector(OVERRIDES, num_classes=3)[1], 3


def real_dataset_fn(global_batch_size: int):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, size=(SIDE, SIDE, 3), dtype=np.uint8)
    image[8:30, 10:40] = 200
    image[36:60, 30:56] = 120
    example = {
        "images": image,
        "image_shapes": np.array([SIDE, SIDE], np.int32),
        "gt_boxes": np.array([[8, 10, 30, 40], [36, 30, 60, 56], [-1, -1, -1, -1]], np.float32),
        "gt_classes": np.array([1, 3, -1], np.int32),
        "gt_mask": np.array([True, True, False]),
    }
    return replica_dataset_fn({k: np.stack([v] * 4) for k, v in example.items()}, global_batch_size)
