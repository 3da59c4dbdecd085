"""rfcn_tf.ops: box utilities and position-sensitive RoI pooling.

``from rfcn_tf.ops import ps_roi_pool`` works; the pooling module (and TensorFlow) is imported
on first access only (PEP 562), so importing this package stays cheap.
"""

from __future__ import annotations

__all__ = ["ps_roi_pool", "ps_roi_pool_tf"]

_LAZY = {
    "ps_roi_pool": ("rfcn_tf.ops.psroi_pool", "ps_roi_pool"),
    "ps_roi_pool_tf": ("rfcn_tf.ops.psroi_pool_tf", "ps_roi_pool_tf"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
