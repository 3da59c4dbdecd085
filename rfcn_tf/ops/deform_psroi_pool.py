"""Deformable position-sensitive RoI pooling (Deformable ConvNets, Dai et al. ICCV 2017, sec. 2.2).

:func:`deform_ps_roi_pool` dispatches, like :func:`rfcn_tf.ops.psroi_pool.ps_roi_pool`, to

* ``"custom"``: the compiled op ``RfcnDeformPsRoiPool`` (C++ CPU kernels, CUDA kernels when
  built with CUDA), loaded lazily from ``rfcn_tf/ops/_deformable_ops.so`` (built by
  ``pip install [-e] .`` / ``python setup.py build_ext --inplace``);
* ``"tf"``: the stock-op twin :func:`rfcn_tf.ops.deform_psroi_pool_tf.deform_ps_roi_pool_tf`
  (what an exported SavedModel / ONNX graph should contain);
* ``"auto"``: the compiled op when it loaded, else the twin with one logged warning.

Shapes (B images, H x W cells, k bins per side, C classes, G offset groups, R RoIs):

    features  [B, H, W, k*k*C]  float32 / float64, bin-major: bin (i, j), class c = channel
                                (i*k + j)*C + c
    rois      [R, 5]            (batch_index, y1, x1, y2, x2), input-image pixels
    offsets   [R, k, k, 2]      normalized (dy, dx) per bin (class-agnostic, the paper's
                                default), or [R, k, k, G, 2] with G dividing C: class c uses group
                                c // (C // G) (G = C: per-class offsets)
    output    [R, k, k, C]

Bin (i, j) is ps_roi_pool's ``mode="bilinear"`` bin (PSRoIAlign) shifted by
``(dy * trans_std * roi_h, dx * trans_std * roi_w)`` with ``roi_h = (y2 - y1) * spatial_scale``;
zero offsets give the bilinear mode exactly. The full arithmetic, and how it differs from the
MXNet reference operator, is in custom_ops/deformable/deformable_math.h. Gradients flow to
``features`` and ``offsets`` (none to ``rois``).

This module also owns the loader of ``_deformable_ops.so``, which
:mod:`rfcn_tf.ops.deform_conv` shares.
"""

from __future__ import annotations

import logging
import os
import threading

import tensorflow as tf

from rfcn_tf.ops.deformable_args import validate_pool_args

__all__ = ["custom_op_available", "custom_op_load_error", "deform_ps_roi_pool"]

_LOGGER = logging.getLogger(__name__)

_SO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_deformable_ops.so")
_IMPLS = ("auto", "custom", "tf")
_BUILD_HINT = (
    "build it with `pip install -e .` (or `python setup.py build_ext --inplace`) from the "
    "repository root"
)
_lock = threading.Lock()
_state = {"tried": False, "module": None, "error": None, "warned": set()}


def load_library():
    """The loaded ``_deformable_ops.so`` module, or None (see :func:`custom_op_load_error`)."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            if not os.path.isfile(_SO_PATH):
                _state["error"] = f"{_SO_PATH} does not exist; {_BUILD_HINT}"
            else:
                try:
                    _state["module"] = tf.load_op_library(_SO_PATH)
                except Exception as exc:  # NotFoundError, OSError, ...
                    _state["error"] = (
                        f"tf.load_op_library({_SO_PATH!r}) failed with {type(exc).__name__}: "
                        f"{exc}; it may have been built against another TensorFlow "
                        f"({tf.__version__} is installed): rebuild it; {_BUILD_HINT}"
                    )
        return _state["module"]


def custom_op_available() -> bool:
    """True when the compiled deformable ops loaded (loads them)."""
    return load_library() is not None


def custom_op_load_error() -> str | None:
    """Why the compiled deformable ops could not be loaded, or None when they loaded."""
    load_library()
    return _state["error"]


def resolve_impl(impl: str, caller: str) -> str:
    """``"custom"`` or ``"tf"`` for ``impl``; RuntimeError for an unavailable ``"custom"``."""
    if impl not in _IMPLS:
        raise ValueError(f"{caller}: impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "custom" and not custom_op_available():
        raise RuntimeError(
            f"{caller}(impl='custom'): the compiled op is not available: {custom_op_load_error()}"
        )
    if impl == "auto":
        if custom_op_available():
            return "custom"
        with _lock:
            warn = caller not in _state["warned"]
            _state["warned"].add(caller)
        if warn:
            _LOGGER.warning(
                "%s(impl='auto'): using the pure-TF twin because the compiled op "
                "is not available: %s",
                caller,
                _state["error"],
            )
        return "tf"
    return impl


def offsets_to_groups(offsets, k):
    """offsets [R, k, k, 2] or [R, k, k, G, 2] -> ([R, k, k, 2*G], G) (G static)."""
    shape = offsets.shape
    if shape.rank == 4 and (shape[3] is None or shape[3] == 2):
        groups = 1
    elif shape.rank == 5 and shape[4] == 2 and shape[3] is not None:
        groups = int(shape[3])
    else:
        raise ValueError(
            f"offsets must be [R, {k}, {k}, 2] or [R, {k}, {k}, G, 2] (dy, dx), got shape {shape}"
        )
    for axis in (1, 2):
        if shape[axis] is not None and shape[axis] != k:
            raise ValueError(
                f"offsets must be [R, {k}, {k}, ...] for output_size {k}, got shape {shape}"
            )
    if groups > 1:
        offsets = tf.reshape(offsets, tf.concat([tf.shape(offsets)[:3], [2 * groups]], 0))
    return offsets, groups


def _pool_attrs(op) -> dict:
    return {
        name: op.get_attr(name)
        for name in ("output_size", "spatial_scale", "sampling_ratio", "trans_std", "offset_groups")
    }


@tf.RegisterGradient("RfcnDeformPsRoiPool")
def _deform_ps_roi_pool_grad(op, grad):
    """features, offsets via RfcnDeformPsRoiPoolGrad; rois: None (constants)."""
    features, rois, offsets = op.inputs
    grad_features, grad_offsets = load_library().rfcn_deform_ps_roi_pool_grad(
        features, rois, offsets, grad, **_pool_attrs(op)
    )
    return [grad_features, None, grad_offsets]


# A Python-level dispatcher: nothing for autograph to convert (see ps_roi_pool).
@tf.autograph.experimental.do_not_convert
def deform_ps_roi_pool(
    features,
    rois,
    offsets,
    output_size: int = 7,
    spatial_scale: float = 1.0 / 16,
    sampling_ratio: int = 2,
    trans_std: float = 0.1,
    impl: str = "auto",
    name: str | None = None,
):
    """Deformable PS-RoI pooling (Deformable ConvNets sec. 2.2), bin-major layout.

    Args:
      features: ``[B, H, W, k*k*C]`` float32 (or float64) NHWC score maps.
      rois: ``[R, 5]`` rows ``(batch_index, y1, x1, y2, x2)`` in input-image pixels, batch_index
        in ``[0, B)``; read as float32.
      offsets: ``[R, k, k, 2]`` normalized ``(dy, dx)`` per bin, or ``[R, k, k, G, 2]``
        (G offset groups, G divides C; G static); same dtype as ``features``.
      output_size: k, bins per side.
      spatial_scale: feature cells per input pixel (1/16 for stride 16).
      sampling_ratio: bilinear points per bin side (>= 1).
      trans_std: offset scale (the paper's gamma, 0.1): the bin moves by
        ``offset * trans_std * RoI size``.
      impl: ``"custom"``, ``"tf"`` or ``"auto"`` (see the module docstring).
      name: optional name scope.

    Returns:
      ``[R, k, k, C]`` of the features' dtype; differentiable w.r.t. features and offsets.

    Raises:
      ValueError: bad arguments or static shapes. RuntimeError: ``impl="custom"`` without the
      compiled op. tf.errors.InvalidArgumentError: bad run-time shapes or batch indices.
    """
    validate_pool_args(output_size, spatial_scale, sampling_ratio, trans_std)
    impl = resolve_impl(impl, "deform_ps_roi_pool")
    with tf.name_scope(name or "deform_ps_roi_pool"):
        if impl == "tf":
            from rfcn_tf.ops.deform_psroi_pool_tf import deform_ps_roi_pool_tf

            return deform_ps_roi_pool_tf(
                features,
                rois,
                offsets,
                output_size=output_size,
                spatial_scale=spatial_scale,
                sampling_ratio=sampling_ratio,
                trans_std=trans_std,
            )
        features = tf.convert_to_tensor(features)
        rois = tf.cast(tf.convert_to_tensor(rois), tf.float32)
        offsets = tf.cast(tf.convert_to_tensor(offsets), features.dtype)
        offsets, groups = offsets_to_groups(offsets, output_size)
        return load_library().rfcn_deform_ps_roi_pool(
            features,
            rois,
            offsets,
            output_size=output_size,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio,
            trans_std=trans_std,
            offset_groups=groups,
        )
