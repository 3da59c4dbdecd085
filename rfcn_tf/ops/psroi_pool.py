"""Position-sensitive RoI pooling (R-FCN, Dai et al. NIPS 2016, sec. 2).

The public entry point :func:`ps_roi_pool` (also ``rfcn_tf.ops.ps_roi_pool``)
dispatches to one of two implementations of one contract
(docs/ARCHITECTURE.md, "PS-RoI pooling op"):

* ``"custom"``: the compiled op ``RfcnPsRoiPool`` (C++ CPU kernels, CUDA
  kernels when built with ``RFCN_TF_CUDA=1``), loaded lazily from
  ``rfcn_tf/ops/_psroi_pool_ops.so``, which ``pip install [-e] .`` or
  ``python setup.py build_ext --inplace`` builds;
* ``"tf"``: the pure-TF twin ``rfcn_tf.ops.psroi_pool_tf.ps_roi_pool_tf``
  (stock ops only: what the exported serving graph and XLA use);
* ``"auto"``: the compiled op when it loaded, else the twin, with one logged
  warning saying why.

Shape shorthand:
    B: images, H, W: feature-map cells, kh x kw: output_size (bins along y
    and x; an int k is k x k), C: output channels (classes), R: RoIs.

    features  [B, H, W, kh*kw*C]  float32 (float16 / bfloat16 in the custom op)
    rois      [R, 5]              float32 rows (batch_index, y1, x1, y2, x2),
                                  input-image pixels (yxyx)
    output    [R, kh, kw, C]      bin (i, j), class c = channel (i*kw + j)*C + c

Gradient: the custom op's gradient with respect to ``features`` is the
compiled ``RfcnPsRoiPoolGrad`` (registered below under the exact op name);
there is no gradient with respect to ``rois`` (``None``): proposals enter the
head as constants (approximate joint training, Faster R-CNN sec. 3.2).
"""

from __future__ import annotations

import logging
import numbers
import os
import threading

import tensorflow as tf

__all__ = ["custom_op_available", "custom_op_load_error", "ps_roi_pool"]

_LOGGER = logging.getLogger(__name__)

_SO_NAME = "_psroi_pool_ops.so"
_IMPLS = ("auto", "custom", "tf")
_BUILD_HINT = (
    "build it with `pip install -e .` (or `python setup.py build_ext "
    "--inplace`) from the repository root"
)


class _OpLibrary:
    """Loads the compiled op library once, remembering why loading failed.

    Args:
      path: absolute path of the shared object.
    """

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._tried = False
        self._module = None
        self._error: str | None = None

    def module(self):
        """The loaded op module (with ``rfcn_ps_roi_pool``,
        ``rfcn_ps_roi_pool_grad``), or None when it could not be loaded."""
        with self._lock:
            if not self._tried:
                self._tried = True
                if not os.path.isfile(self.path):
                    self._error = f"{self.path} does not exist; {_BUILD_HINT}"
                else:
                    try:
                        self._module = tf.load_op_library(self.path)
                    except Exception as exc:  # NotFoundError, OSError, ...
                        self._error = (
                            f"tf.load_op_library({self.path!r}) failed with "
                            f"{type(exc).__name__}: {exc}; the .so may have been "
                            f"built against another TensorFlow ({tf.__version__} "
                            f"is installed): rebuild it; {_BUILD_HINT}"
                        )
            return self._module

    def error(self) -> str | None:
        """Why loading failed, or None (loaded, or not tried yet)."""
        self.module()
        return self._error


_LIBRARY = _OpLibrary(os.path.join(os.path.dirname(os.path.abspath(__file__)), _SO_NAME))
_FALLBACK_WARNED = False
_WARN_LOCK = threading.Lock()


def custom_op_available() -> bool:
    """True when the compiled RfcnPsRoiPool op library loaded (loads it)."""
    return _LIBRARY.module() is not None


def custom_op_load_error() -> str | None:
    """Why the compiled op could not be loaded, or None when it loaded."""
    return _LIBRARY.error()


def _require_library():
    module = _LIBRARY.module()
    if module is None:
        raise RuntimeError(
            f"ps_roi_pool(impl='custom'): the compiled op is not available: {_LIBRARY.error()}"
        )
    return module


def _warn_fallback_once() -> None:
    global _FALLBACK_WARNED
    with _WARN_LOCK:
        if _FALLBACK_WARNED:
            return
        _FALLBACK_WARNED = True
    _LOGGER.warning(
        "ps_roi_pool(impl='auto'): using the pure-TF twin because the "
        "compiled op is not available: %s",
        _LIBRARY.error(),
    )


def _output_grid(output_size) -> tuple[int, int]:
    """(kh, kw) from an int k or a pair; ValueError naming the value otherwise."""
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair
    ):
        raise ValueError(
            f"output_size must be an int k or a pair (kh, kw) of ints, got {output_size!r}"
        )
    if min(pair) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size!r}")
    return int(pair[0]), int(pair[1])


def _op_attrs(op) -> dict:
    """The pooling attrs of an RfcnPsRoiPool / RfcnPsRoiPoolGrad op."""
    mode = op.get_attr("mode")
    return {
        "pooled_height": op.get_attr("pooled_height"),
        "pooled_width": op.get_attr("pooled_width"),
        "spatial_scale": op.get_attr("spatial_scale"),
        "mode": mode.decode() if isinstance(mode, bytes) else mode,
        "sampling_ratio": op.get_attr("sampling_ratio"),
    }


@tf.RegisterGradient("RfcnPsRoiPool")
def _ps_roi_pool_grad(op, grad):
    """Gradient of RfcnPsRoiPool: features via RfcnPsRoiPoolGrad; rois: None.

    Args:
      op: the forward op; inputs ``features [B, H, W, kh*kw*C]``, ``rois [R, 5]``.
      grad: ``[R, kh, kw, C]``, gradient of the pooled output.

    Returns:
      ``[grad_features [B, H, W, kh*kw*C], None]``: no gradient flows to the RoI
      coordinates (they are treated as constants).
    """
    features, rois = op.inputs[0], op.inputs[1]
    grad_features = _require_library().rfcn_ps_roi_pool_grad(features, rois, grad, **_op_attrs(op))
    return [grad_features, None]


@tf.RegisterGradient("RfcnPsRoiPoolGrad")
def _ps_roi_pool_grad_grad(op, grad):
    """Gradient of RfcnPsRoiPoolGrad (for second-order autodiff).

    The backward is linear in its ``grad`` input and is the adjoint of the
    forward pooling, so its gradient with respect to ``grad`` is the forward
    pooling of the incoming ``grad [B, H, W, kh*kw*C]``. The ``features`` input
    only supplies a shape, and ``rois`` are constants: both get None.
    """
    rois = op.inputs[1]
    pooled = _require_library().rfcn_ps_roi_pool(grad, rois, **_op_attrs(op))
    return [None, None, pooled]


# A Python-level dispatcher: autograph has nothing to convert here, and converting it
# mis-resolves the lazily imported twin inside tf.function; the twin is graph-safe as is.
@tf.autograph.experimental.do_not_convert
def ps_roi_pool(
    features,
    rois,
    output_size: int | tuple[int, int] = 7,
    spatial_scale: float = 1.0 / 16,
    mode: str = "avg",
    sampling_ratio: int = 2,
    impl: str = "auto",
    name: str | None = None,
):
    """Position-sensitive RoI pooling (R-FCN sec. 2), bin-major layout.

    Bin (i, j) of RoI r, class c averages channel ``(i*kw + j)*C + c`` of
    ``features`` over the bin's part of the RoI. Voting (the mean over the
    kh x kw bins) is the head's job.

    Args:
      features: ``[B, H, W, kh*kw*C]`` float32 NHWC score maps (the custom op
        also takes float16 / bfloat16 and accumulates in float32).
      rois: ``[R, 5]`` rows ``(batch_index, y1, x1, y2, x2)`` in input-image
        pixels; batch_index in ``[0, B)``. Cast to float32 for the custom op.
      output_size: k (k x k bins) or ``(kh, kw)``: bins along y and x (>= 1;
        rectangular grids as torchvision's ps_roi_align and the TF OD API's
        num_spatial_bins_height/width).
      spatial_scale: feature cells per input pixel (1/16 for stride 16).
      mode: ``"avg"``: the paper's average over integer bins (corners
        rounded half away from zero; empty bin -> 0); ``"bilinear"``:
        PSRoIAlign, ``sampling_ratio**2`` bilinear points per bin
        (torchvision.ops.ps_roi_align's rules). Exact arithmetic:
        docs/ARCHITECTURE.md.
      sampling_ratio: bilinear points per bin side; ``<= 0`` means adaptive:
        ceil(bin size in feature cells) per RoI and axis, clamped to
        [1, 128] (torchvision's rule); unused by "avg".
      impl: ``"custom"`` (compiled op; RuntimeError saying why if it did not
        load), ``"tf"`` (pure-TF twin), or ``"auto"`` (custom when loaded,
        else the twin with one logged warning).
      name: optional name scope.

    Returns:
      ``[R, kh, kw, C]`` tensor of the features' dtype. Differentiable with
      respect to ``features`` only.

    Raises:
      ValueError: unknown ``impl``; a bad ``output_size``; bad static shapes
        (graph mode).
      tf.errors.InvalidArgumentError: bad shapes, attrs or batch indices at
        run time (eager mode or unknown static shapes).
      RuntimeError: ``impl="custom"`` while the compiled op is unavailable.

    Example:
      >>> feats = tf.random.normal([1, 38, 63, 7 * 7 * 21])
      >>> rois = tf.constant([[0.0, 16.0, 32.0, 320.0, 480.0]])
      >>> ps_roi_pool(feats, rois, output_size=7).shape
      TensorShape([1, 7, 7, 21])
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    kh, kw = _output_grid(output_size)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral):
        raise ValueError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    if impl == "auto":
        impl = "custom" if custom_op_available() else "tf"
        if impl == "tf":
            _warn_fallback_once()
    if impl == "tf":
        from rfcn_tf.ops.psroi_pool_tf import ps_roi_pool_tf

        with tf.name_scope(name or "ps_roi_pool"):
            return ps_roi_pool_tf(
                features,
                rois,
                output_size=output_size,
                spatial_scale=spatial_scale,
                mode=mode,
                sampling_ratio=sampling_ratio,
            )
    library = _require_library()
    with tf.name_scope(name or "ps_roi_pool"):
        features = tf.convert_to_tensor(features)
        rois = tf.convert_to_tensor(rois)
        if rois.dtype != tf.float32:
            rois = tf.cast(rois, tf.float32)
        return library.rfcn_ps_roi_pool(
            features,
            rois,
            pooled_height=kh,
            pooled_width=kw,
            spatial_scale=spatial_scale,
            mode=mode,
            sampling_ratio=int(sampling_ratio),
        )
