"""Exporting a trained R-FCN detector for serving: SavedModel (TF Serving), ONNX, TF-TRT.

Modules (``docs/ARCHITECTURE.md``, "Export"):

- ``contract``: signature keys, input/output names, file names (TF-free; the client's too).
- ``serving_module``: ``DetectorServingModule``, the signatures around a detector.
- ``saved_model``: ``export_saved_model`` (versions, labels, staging), ``verify_export`` (a
  fresh process: stock ops only, every signature runs), ``write_batching_parameters``.
- ``onnx``: tf2onnx conversion of ``serving_default`` and its onnxruntime check.
- ``tensorrt``: TF-TRT conversion where TensorFlow has TensorRT.
- ``__main__``: the CLI, ``python -m rfcn_tf.export``.

Names are loaded lazily (PEP 562) so that ``python -m rfcn_tf.export --help`` and the client's
import of ``contract`` need no TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DetectorServingModule": "serving_module",
    "ExportError": "saved_model",
    "export_saved_model": "saved_model",
    "verify_export": "saved_model",
    "list_versions": "saved_model",
    "next_version": "saved_model",
    "saved_model_op_types": "saved_model",
    "write_batching_parameters": "saved_model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rfcn_tf.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rfcn_tf.export.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
