"""rfcn_tf.data: sources (shapes, VOC folders, COCO JSON, TFDS), transforms and tf.data pipelines.

The names below are imported on first use (PEP 562), so `import rfcn_tf.data.errors` or
`python -m rfcn_tf.data.inspect --help` do not pay for importing TensorFlow.
"""

import importlib

__all__ = [
    "EXAMPLE_KEYS",
    "FEATURE_KEYS",
    "DataError",
    "DatasetInfo",
    "build_dataset",
    "build_source",
]

_LAZY = {
    "DataError": "rfcn_tf.data.errors",
    "DatasetInfo": "rfcn_tf.data.sources.base",
    "EXAMPLE_KEYS": "rfcn_tf.data.sources.base",
    "FEATURE_KEYS": "rfcn_tf.data.pipeline",
    "build_dataset": "rfcn_tf.data.pipeline",
    "build_source": "rfcn_tf.data.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rfcn_tf.data' has no attribute {name!r}")
