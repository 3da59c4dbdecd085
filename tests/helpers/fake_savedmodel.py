"""A stand-in exported SavedModel for the CLI tests (evaluate, predict) that read `--saved-model`.

It meets the serving_default contract of docs/ARCHITECTURE.md ("Export") (uint8 `[1, H, W, 3]` "input_tensor" in;
"detection_boxes" float32 `[1, M, 4]` normalized yxyx, "detection_scores" `[1, M]`,
"detection_classes" float32 `[1, M]` (1..C), "num_detections" float32 `[1]` out; labels.txt
asset) and returns the same known detections for every image, so every number a test checks is
known; it saves in about a second.
"""

import os

import numpy as np
import tensorflow as tf


def write_fake_export(folder, class_names, *, boxes, scores, classes, m=5):
    """Saves the stand-in model to `folder` (e.g. export/<name>/<version>) and returns `folder`.

    Args:
        folder: the version folder to write (must not exist).
        class_names: C names written one a line to the labels.txt asset.
        boxes: float32 `[K, 4]` normalized yxyx detections returned for every image.
        scores: float32 `[K]`. classes: float32 `[K]` class ids 1..C.
        m: M, the padded number of detection rows (K <= M; rows after K are zeros).
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    classes = np.asarray(classes, np.float32)
    scratch = folder + "_labels"  # the asset keeps its file name: labels.txt
    os.makedirs(scratch)
    labels = os.path.join(scratch, "labels.txt")
    with open(labels, "w") as f:
        f.write("".join(f"{n}\n" for n in class_names))

    class Fake(tf.Module):
        def __init__(self):
            super().__init__()
            self.labels = tf.saved_model.Asset(labels)

        @tf.function(
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")]
        )
        def serve(self, input_tensor):
            pad = m - boxes.shape[0]
            return {
                "detection_boxes": tf.constant(np.pad(boxes, [[0, pad], [0, 0]])[None]),
                "detection_scores": tf.constant(np.pad(scores, [0, pad])[None]),
                "detection_classes": tf.constant(np.pad(classes, [0, pad])[None]),
                "num_detections": tf.constant([float(boxes.shape[0])]),
            }

    module = Fake()
    tf.saved_model.save(module, folder, signatures={"serving_default": module.serve})
    return folder
