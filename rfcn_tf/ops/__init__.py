"""rfcn_tf.ops: the PS-RoI pooling op (`rfcn_tf.ops.ps_roi_pool`), box ops.

`ps_roi_pool` loads lazily (PEP 562): importing `rfcn_tf.ops` loads no TensorFlow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ps_roi_pool"]


def __getattr__(name: str) -> Any:
    if name == "ps_roi_pool":
        from rfcn_tf.ops.psroi_pool import ps_roi_pool

        return ps_roi_pool
    raise AttributeError(f"module 'rfcn_tf.ops' has no attribute {name!r}")
