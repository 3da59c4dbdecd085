"""Argument checks shared by the deformable ops and their stock-op twins.

The compiled-op modules (``deform_conv.py``, ``deform_psroi_pool.py``) and the twins
(``deform_conv_tf.py``, ``deform_psroi_pool_tf.py``) both validate and normalize their arguments
here, so the two implementations accept and reject the same inputs with the same messages, and
neither imports the other at module level (no import cycle). No TensorFlow import.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["normalize_conv_args", "validate_pool_args"]


def _pair(value, label):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in value
    ):
        raise ValueError(f"{label} must be an int >= 1 or a pair of them, got {value!r}")
    return tuple(int(v) for v in value)


def normalize_conv_args(strides, dilations, padding):
    """(strides, dilations, padding, explicit_paddings) for the op attrs.

    padding: "SAME" / "VALID" (tf.nn.conv2d's rules, case-insensitive), an int p (p on every
    side), or ((top, bottom), (left, right)).
    """
    strides, dilations = _pair(strides, "strides"), _pair(dilations, "dilations")
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"padding must be 'SAME', 'VALID', an int or ((top, bottom), "
                f"(left, right)), got {padding!r}"
            )
        return strides, dilations, padding.upper(), []
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        padding = ((padding, padding), (padding, padding))
    try:
        (top, bottom), (left, right) = padding
        pads = [int(top), int(bottom), int(left), int(right)]
    except (TypeError, ValueError):
        raise ValueError(
            f"padding must be 'SAME', 'VALID', an int or ((top, bottom), "
            f"(left, right)), got {padding!r}"
        ) from None
    if min(pads) < 0:
        raise ValueError(f"explicit padding must be >= 0, got {padding!r}")
    return strides, dilations, "EXPLICIT", pads


def validate_pool_args(output_size, spatial_scale, sampling_ratio, trans_std):
    """ValueError naming the bad argument (shared with the twin)."""
    for name, value in (("output_size", output_size), ("sampling_ratio", sampling_ratio)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if (
        isinstance(spatial_scale, bool)
        or not isinstance(spatial_scale, numbers.Real)
        or not math.isfinite(spatial_scale)
        or spatial_scale <= 0
    ):
        raise ValueError(f"spatial_scale must be a finite number > 0, got {spatial_scale!r}")
    if (
        isinstance(trans_std, bool)
        or not isinstance(trans_std, numbers.Real)
        or not math.isfinite(trans_std)
    ):
        raise ValueError(f"trans_std must be a finite number, got {trans_std!r}")
