"""rfcn_tf: R-FCN (Dai et al., NIPS 2016) object detection for TensorFlow 2 / Keras 3.

The public surface::

    import rfcn_tf
    detector = rfcn_tf.load("runs/shapes_tiny")     # run dir, checkpoint, SavedModel, model base
    result = detector.predict("photo.jpg")          # path, uint8 HxWx3 array, PIL image, or a list
    result.boxes, result.scores, result.class_ids, result.class_names

Names: `load`, `Detector`, `Detections`, `RfcnError` (the base of every error the package
raises on purpose), `__version__`. They load lazily (PEP 562), so `import rfcn_tf` and the
CLIs' `--help` import no TensorFlow. The layout of the package: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from rfcn_tf.errors import RfcnError

__version__ = "0.1.0"

_LAZY = {
    "load": "rfcn_tf.inference.detector",
    "load_checkpoint": "rfcn_tf.inference.detector",
    "load_saved_model": "rfcn_tf.inference.detector",
    "Detector": "rfcn_tf.inference.detector",
    "Detections": "rfcn_tf.inference.detector",
}

__all__ = [
    "Detections",
    "Detector",
    "RfcnError",
    "__version__",
    "load",
    "load_checkpoint",
    "load_saved_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rfcn_tf' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
