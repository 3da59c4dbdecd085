"""rfcn_tf.data: sources (shapes, VOC folders, COCO JSON, TFDS), transforms and tf.data pipelines."""

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import FEATURE_KEYS, build_dataset, build_source
from rfcn_tf.data.sources.base import EXAMPLE_KEYS, DatasetInfo

__all__ = ["DataError", "DatasetInfo", "EXAMPLE_KEYS", "FEATURE_KEYS", "build_dataset",
           "build_source"]
