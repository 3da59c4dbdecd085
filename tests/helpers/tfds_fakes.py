"""A mocked TFDS detection dataset (tfds.testing.mock_data's as_dataset), NUM examples with
real encoded images, so the TFDS source is tested without downloads (tests/data and the epochs
tests use it)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from helpers.data_fixtures import random_pixels

NUM = 3


def _bbox(i):
    """Boxes of example i: i + 1 normalized yxyx rows."""
    return np.array([[0.1 * k, 0.2, 0.1 * k + 0.3, 0.6] for k in range(i + 1)], np.float32)


def _objects(features, i):
    n = i + 1
    obj = {"bbox": _bbox(i), "label": np.arange(n, dtype=np.int64) + i}
    for key in features["objects"].feature.keys():
        if key == "is_difficult":
            obj[key] = np.arange(n) == 0
        elif key == "is_crowd":
            obj[key] = np.arange(n) == n - 1
        elif key in ("is_truncated",):
            obj[key] = np.zeros(n, bool)
        elif key in ("pose", "id", "area"):
            obj[key] = np.zeros(n, np.int64)
    return obj


def _fake_as_dataset(corrupt_index=None):
    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        features = self.info.features
        encoded = []
        for i in range(NUM):
            ex = {"image": random_pixels(20 + i, 30, seed=i), "objects": _objects(features, i)}
            if "image/filename" in features:
                ex["image/filename"] = (
                    f"{2007 if '2007' in self.info.full_name else 2012}_{i:06d}.jpg"
                )
            if "image/id" in features:
                ex["image/id"] = 1000 + i
            for key in ("labels", "labels_no_difficult"):
                if key in features:
                    ex[key] = ex["objects"]["label"]
            enc = features.encode_example(ex)
            if i == corrupt_index:
                enc["image"] = b"not an image"
            encoded.append(enc)
        specs = tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype), features.get_serialized_info()
        )
        ds = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=specs)
        ds = ds.apply(tf.data.experimental.assert_cardinality(NUM))
        return ds.map(lambda e: features.decode_example(e, decoders=decoders))

    return as_dataset
