"""Shared pieces of the export tests: a tiny real R-FCN, a known-answer stand-in detector, test
images and an independent in-Python reference of the serving signature.

Shape shorthand: H/W original image, h/w resized image, M max detections.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from helpers.tiny_models import preset_detector
from rfcn_tf.data.sources.voc_xml import default_voc_root

MIN_SIZE, MAX_SIZE = 256, 320  # the test exports' resize
CLASS_NAMES = ["circle", "square", "triangle"]
BCCD_IMAGE = default_voc_root() / "JPEGImages" / "BloodImage_00000.jpg"
# Overrides of the shapes_tiny preset: the serving graph must be stock TF (psroi_impl=tf);
# fewer proposals keep the tests fast.
MODEL_OVERRIDES = [
    "model.head.psroi_impl=tf",
    "model.rpn.pre_nms_top_n_test=300",
    "model.rpn.post_nms_top_n_test=50",
    "model.postprocess.max_detections=30",
]


def build_tiny_model(seed: int = 0):
    """shapes_tiny's R-FCN (small backbone, 3 classes) with random weights whose class and
    objectness logits are spread out (kernels x100): untrained heads give near-equal scores, and
    float32 ties would let two runtimes order equal-scored detections differently."""
    config, model = preset_detector(MODEL_OVERRIDES, num_classes=len(CLASS_NAMES), seed=seed)
    for variable in model.variables:
        if variable.path.endswith(("rfcn_class_maps/kernel", "rpn_objectness/kernel")):
            variable.assign(variable * 100.0)
    return config, model


class StandInDetector(tf.Module):
    """Known-answer stand-in with ``RFCN``'s inference contract (``model(inputs,
    training=False)`` -> rois, class_probs, box_deltas, roi_valid; post-processing attributes).

    For the resized size (h, w) it scores R = 4 RoIs, 2 of them valid: RoI 0 = [0, 0, h/2, w/4]
    with probabilities (0.1, 0, 0.9) (background, cat, dog), RoI 1 = [h/4, w/2, h, w] with
    (0.5, 0.5, 0); zero box deltas. So the detections (M = 4) are dog 0.9 at RoI 0's box and
    cat 0.5 at RoI 1's, zero padding after. A variable scales the probabilities so the export
    must carry variables."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        from rfcn_tf.model.postprocess import PostProcessor

        self.score_scale = tf.Variable(1.0)
        self.postprocessor = PostProcessor(
            {"score_threshold": 0.05, "nms_iou": 0.3, "max_detections": 4}
        )

    def __call__(self, inputs, training=False):
        images, image_shapes = inputs["images"], inputs["image_shapes"]
        batch = tf.shape(images)[0]
        hw = tf.cast(image_shapes, tf.float32)
        h, w = hw[:, 0], hw[:, 1]
        zero = tf.zeros_like(h)
        rois = tf.stack(
            [
                tf.stack([zero, zero, h / 2, w / 4], -1),
                tf.stack([h / 4, w / 2, h, w], -1),
                tf.zeros([batch, 4]),
                tf.zeros([batch, 4]),
            ],
            axis=1,
        )
        # Mean of the padded image keeps `images` in the graph (and checks it is uint8).
        touch = 0.0 * tf.reduce_mean(tf.cast(images, tf.float32))
        probs = tf.constant([[0.1, 0.0, 0.9], [0.5, 0.5, 0.0], [1, 0, 0], [1, 0, 0]])
        probs = tf.tile(probs[None], [batch, 1, 1]) * self.score_scale + touch
        return {
            "rois": rois,
            "class_probs": probs,
            "box_deltas": tf.zeros([batch, 4, 4]),
            "roi_valid": tf.tile(tf.constant([[True, True, False, False]]), [batch, 1]),
        }


STANDIN_BOXES = np.array([[0, 0, 0.5, 0.25], [0.25, 0.5, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
STANDIN_MULTICLASS = np.array([[0.1, 0.0, 0.9], [0.5, 0.5, 0.0], [0, 0, 0], [0, 0, 0]])


def synthetic_image(height: int = 300, width: int = 400, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: coloured discs and squares on a smooth background (structured, unlike
    noise, so detections are not all ties)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([yy * 200 / height, xx * 200 / width, np.full_like(yy, 60.0)], -1)
    for _ in range(6):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(10, max(11, min(height, width) // 4))
        colour = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        image[mask] = colour
    return image.astype(np.uint8)


def sample_jpeg() -> bytes:
    """A real JPEG: the BCCD image (640x480) where present, else an encoded synthetic one."""
    if BCCD_IMAGE.is_file():
        return BCCD_IMAGE.read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(480, 640)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decode(encoded: bytes) -> np.ndarray:
    """The bytes -> uint8 [H, W, 3] as TensorFlow decodes them (the signature's decoder)."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()


def reference_outputs(model, image: np.ndarray) -> dict[str, np.ndarray]:
    """The serving signature's outputs computed outside it: resize with the shared
    ``resize_image``, zero-pad with NumPy, ``model.detect`` eagerly, normalize in float64."""
    from rfcn_tf.data.transforms import resize_image

    resized, _ = resize_image(tf.constant(image), min_size=MIN_SIZE, max_size=MAX_SIZE)
    resized = resized.numpy()
    h, w = resized.shape[:2]
    padded = np.zeros((-(-h // 16) * 16, -(-w // 16) * 16, 3), np.uint8)
    padded[:h, :w] = resized
    out = {
        k: np.asarray(v)
        for k, v in model.detect(tf.constant(padded[None]), tf.constant([[h, w]], tf.int32)).items()
    }
    boxes = out["detection_boxes"].astype(np.float64) / np.array([h, w, h, w], np.float64)
    return {
        "detection_boxes": np.clip(boxes, 0.0, 1.0),
        "detection_scores": out["detection_scores"].astype(np.float64),
        "detection_classes": out["detection_classes"].astype(np.float64),
        "num_detections": out["num_detections"].astype(np.float64),
    }


def assert_outputs_close(actual, expected, *, atol: float) -> None:
    """Every output of ``expected`` (the four of ``reference_outputs``, or all) is in
    ``actual`` with the same shape and values to ``atol``."""
    assert set(expected) <= set(actual), (sorted(actual), sorted(expected))
    for key in expected:
        got = np.asarray(actual[key], np.float64)
        want = np.asarray(expected[key], np.float64)
        assert got.shape == want.shape, (key, got.shape, want.shape)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=key)
