"""Issue 12 item 5: the exported `serving_encoded` signature with 2 images returns detections
for BOTH images (each equal to its single-image call), where it used to answer with the first
image's only. Through the public serving module (the graph the SavedModel saves)."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from fault_helpers import small_voc, tiny_overrides
from PIL import Image

from rfcn_tf.config import load_config
from rfcn_tf.export.serving_module import DetectorServingModule
from rfcn_tf.model.builder import build_detector


def _png(height, width, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_serving_encoded_answers_every_image_of_a_batch(tmp_path):
    voc = small_voc(tmp_path / "voc")
    cfg = load_config(
        "shapes_tiny",
        tiny_overrides(voc, tmp_path / "run")
        + ["model.head.psroi_impl=tf", "model.postprocess.score_threshold=0.0"],
    )
    model = build_detector(cfg.model, num_classes=2)
    module = DetectorServingModule(model, min_size=48, max_size=64)
    serve = module.signatures()["serving_encoded"]
    images = [_png(48, 48, 1), _png(40, 56, 2)]  # two sizes: each runs at its own size
    both = {k: v.numpy() for k, v in serve(tf.constant(images)).items()}
    assert both["num_detections"].shape == (2,)
    assert both["num_detections"][1] > 0  # the second image has its own answer
    for index, image in enumerate(images):
        alone = {k: v.numpy() for k, v in serve(tf.constant([image])).items()}
        for key in ("detection_boxes", "detection_scores", "detection_classes", "num_detections"):
            np.testing.assert_allclose(both[key][index], alone[key][0], atol=1e-5, err_msg=key)
