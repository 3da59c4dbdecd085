"""The one resize -> pad -> detect -> rescale path (rfcn_tf/inference/preprocess.py)."""

import numpy as np
import tensorflow as tf

from rfcn_tf.data.transforms import resize_image
from rfcn_tf.inference.preprocess import (
    boxes_to_original,
    detect_images,
    normalize_boxes,
    pad_batch,
    preprocess,
)


def _fake_detect(images, image_shapes):
    """One box per image covering its whole resized region (yxyx pixels), class 1."""
    n = tf.shape(images)[0]
    hw = tf.cast(image_shapes, tf.float32)
    return {
        "detection_boxes": tf.concat([tf.zeros([n, 1, 2]), hw[:, None, :]], -1),
        "detection_scores": tf.ones([n, 1]),
        "detection_classes": tf.ones([n, 1], tf.int32),
        "num_detections": tf.ones([n], tf.int32),
    }


def test_preprocess_resizes_like_evaluation_and_pads_to_the_stride():
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    padded, hw = preprocess(image, min_size=100, max_size=300, size_multiple=16)
    assert hw.numpy().tolist() == [100, 160]
    assert padded.shape == (112, 160, 3)
    expected, _ = resize_image(image, min_size=100, max_size=300)
    np.testing.assert_array_equal(padded[:100, :160].numpy(), expected.numpy())
    assert not padded[100:].numpy().any()


def test_preprocess_works_inside_a_tf_function():
    fn = tf.function(
        lambda x: preprocess(x, min_size=64, max_size=128, size_multiple=16),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
    )
    padded, hw = fn(tf.zeros([30, 90, 3], tf.uint8))
    assert hw.numpy().tolist() == [43, 128]  # max_size caps the longer side
    assert padded.shape == (48, 128, 3)


def test_pad_batch_list_and_ragged():
    batch, shapes = pad_batch(
        [tf.ones([3, 5, 3], tf.uint8), tf.ones([7, 2, 3], tf.uint8)], size_multiple=4
    )
    assert batch.shape == (2, 8, 8, 3)
    assert shapes.numpy().tolist() == [[3, 5], [7, 2]]
    assert batch[0, :3, :5].numpy().all() and not batch[0, 3:].numpy().any()
    ragged = tf.ragged.constant([np.ones((3, 4, 3)), np.ones((5, 2, 3))], ragged_rank=2)
    batch, shapes = pad_batch(tf.cast(ragged, tf.uint8), size_multiple=4)
    assert batch.shape == (2, 8, 4, 3)
    assert shapes.numpy().tolist() == [[3, 4], [5, 2]]


def test_boxes_to_original_scales_and_clips():
    boxes = tf.constant([[[10.0, 20.0, 100.0, 170.0]]])
    out = boxes_to_original(boxes, [[100, 160]], [[50, 80]]).numpy()
    np.testing.assert_allclose(out, [[[5.0, 10.0, 50.0, 80.0]]])  # x2 clipped to W
    one = boxes_to_original(tf.constant([[10.0, 20.0, 50.0, 60.0]]), [100, 100], [200, 300])
    np.testing.assert_allclose(one.numpy(), [[20.0, 60.0, 100.0, 180.0]])
    np.testing.assert_allclose(
        normalize_boxes(tf.constant([[10.0, 20.0, 50.0, 80.0]]), [100, 80]).numpy(),
        [[0.1, 0.25, 0.5, 1.0]],
    )


def test_detect_images_returns_original_pixels_for_mixed_sizes():
    images = [np.zeros((50, 80, 3), np.uint8), np.zeros((200, 100, 3), np.uint8)]
    out = detect_images(_fake_detect, images, min_size=100, max_size=300, size_multiple=16)
    np.testing.assert_allclose(
        out["detection_boxes"].numpy(), [[[0, 0, 50, 80]], [[0, 0, 200, 100]]], atol=1e-4
    )
    fn = tf.function(
        lambda x: detect_images(_fake_detect, [x], min_size=100, max_size=300, normalized=True)
    )
    np.testing.assert_allclose(fn(images[0])["detection_boxes"].numpy(), [[[0, 0, 1, 1]]])
