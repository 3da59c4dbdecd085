"""TF-TRT conversion of an exported SavedModel (``python -m rfcn_tf.export --tensorrt P``).

TF-TRT (``TrtGraphConverterV2``) replaces TensorRT-compatible subgraphs of the serving graph
by ``TRTEngineOp`` nodes, in FP32, FP16 or INT8 (calibrated on dataset images). It needs a
TensorFlow built with TensorRT and a GPU. TensorFlow's pip wheels stopped shipping TensorRT
support with 2.18, so on a pip install ``tensorrt_status()`` reports it unavailable and
``require_tensorrt`` raises ``TensorRTUnavailableError`` whose message points to the ONNX path
(``--onnx``, then ``trtexec``; see ``rfcn_tf.export.onnx``).

The probe: ``tensorflow.compiler.tf2tensorrt._pywrap_py_utils.is_tensorrt_enabled()``
plus a visible GPU (``tf.config.list_physical_devices("GPU")``).

The converted model keeps TF Serving's layout (``<out>_trt_<precision>/<version>/``); only
``serving_default`` is converted, ``serving_encoded`` is saved unchanged. Engines are built
with dynamic shapes (the input's H and W vary) from the calibration/build images, and later
shapes build engines at run time (``allow_build_at_runtime``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from rfcn_tf.export.contract import INPUT_IMAGE, SIGNATURE_IMAGE

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_HINT = (
    "Export to ONNX instead (`python -m rfcn_tf.export ... --onnx`, which checks the "
    "model with onnxruntime) and build a TensorRT engine from it on the GPU machine: "
    "`trtexec --onnx=export/rfcn_onnx/<version>/model.onnx --saveEngine=rfcn.plan "
    "--fp16` (see rfcn_tf/export/onnx.py); or run this command under a "
    "TensorFlow built with TensorRT (TF_NEED_TENSORRT=1) on a machine with a GPU."
)


class TensorRTUnavailableError(RuntimeError):
    """TF-TRT cannot run in this process (no TensorRT in TensorFlow, or no GPU)."""


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): whether TF-TRT can convert here, and why not."""
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils
    except ImportError as exc:
        return False, f"this TensorFlow {tf.__version__} has no tf2tensorrt module ({exc})"
    if not _pywrap_py_utils.is_tensorrt_enabled():
        return False, (
            f"this TensorFlow {tf.__version__} was built without TensorRT (pip "
            "wheels since TF 2.18 ship without it)"
        )
    if not tf.config.list_physical_devices("GPU"):
        return False, "TensorFlow sees no GPU (TF-TRT builds engines on a GPU)"
    return True, f"TensorRT enabled in TensorFlow {tf.__version__}, GPU visible"


def require_tensorrt() -> None:
    """Raises ``TensorRTUnavailableError`` (with the way forward) unless TF-TRT can run."""
    available, reason = tensorrt_status()
    if not available:
        raise TensorRTUnavailableError(f"TF-TRT is unavailable: {reason}. {ONNX_HINT}")


def _converter_class():
    """``TrtGraphConverterV2`` (looked up at call time; tests replace this function)."""
    from tensorflow.python.compiler.tensorrt import trt_convert

    return trt_convert.TrtGraphConverterV2


def _input_fn(images: Sequence[np.ndarray]) -> Callable[[], Any]:
    def generate():
        for image in images:
            yield {INPUT_IMAGE: tf.constant(image)}

    return generate


def convert_saved_model(
    saved_model_dir: os.PathLike,
    *,
    output_dir: os.PathLike,
    precision: str,
    calibration_images: Sequence[np.ndarray] | None = None,
    build_images: Sequence[np.ndarray] | None = None,
    max_workspace_size_bytes: int = 1 << 30,
    minimum_segment_size: int = 3,
) -> Path:
    """Converts ``serving_default`` of a SavedModel with TF-TRT and saves the result.

    Args:
      saved_model_dir: a version folder of ``rfcn_tf.export.export_saved_model``.
      output_dir: where the converted SavedModel goes (must not exist).
      precision: ``fp32`` | ``fp16`` | ``int8``.
      calibration_images: INT8 only, required: uint8 [1, H, W, 3] images of ONE shape
        (TF-TRT calibrates on a single shape; ``dataset_calibration_images`` resizes them).
      build_images: inputs whose shapes get engines built before saving; defaults to the
        calibration images, or none (engines are then built at run time).
      max_workspace_size_bytes: TensorRT builder workspace.
      minimum_segment_size: smallest subgraph (nodes) turned into a TensorRT engine.

    Returns:
      ``output_dir``.

    Raises:
      TensorRTUnavailableError: TF-TRT cannot run here (message points to ONNX).
      ValueError: bad precision, missing or mixed-shape calibration images.
    """
    precision = precision.lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8":
        if not calibration_images:
            raise ValueError("INT8 needs calibration_images (uint8 [1, H, W, 3], one shape)")
        shapes = {tuple(np.shape(image)) for image in calibration_images}
        if len(shapes) != 1 or len(next(iter(shapes))) != 4:
            raise ValueError(
                f"calibration images must share one [1, H, W, 3] shape, got {sorted(shapes)}"
            )
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists; not overwriting it")
    require_tensorrt()

    converter = _converter_class()(
        input_saved_model_dir=str(saved_model_dir),
        input_saved_model_signature_key=SIGNATURE_IMAGE,
        precision_mode=precision.upper(),
        use_dynamic_shape=True,
        dynamic_shape_profile_strategy="Range",
        max_workspace_size_bytes=max_workspace_size_bytes,
        minimum_segment_size=minimum_segment_size,
        maximum_cached_engines=16,
        use_calibration=precision == "int8",
        allow_build_at_runtime=True,
    )
    if precision == "int8":
        converter.convert(calibration_input_fn=_input_fn(calibration_images))
    else:
        converter.convert()
    build = build_images if build_images is not None else calibration_images
    if build:
        converter.build(input_fn=_input_fn(build))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    converter.save(str(output_dir))
    return output_dir


def dataset_calibration_images(
    data_cfg: Any, *, count: int, split: str | None = None, size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """``count`` images of the dataset (validation split by default) for INT8 calibration.

    Each is resized (bilinear, aspect ratio not kept) to one common ``size`` (height, width),
    by default (``evaluation_scale(data.scales)``, ``data.max_size``) capped to a 4:3 landscape, because
    TF-TRT calibrates on one input shape; the serving graph resizes again inside.

    Returns:
      uint8 [1, h, w, 3] arrays.
    """
    if count < 1:
        raise ValueError(f"calibration needs at least 1 image, got count={count}")
    from rfcn_tf.data.pipeline import build_source, evaluation_scale

    examples, _ = build_source(data_cfg, split=split or data_cfg.val_split)
    if size is None:
        short = int(evaluation_scale(data_cfg.scales))
        size = (short, min(int(data_cfg.max_size), int(round(short * 4 / 3))))
    images = []
    for example in examples.take(count):
        resized = tf.image.resize(example["image"], size, method="bilinear")
        images.append(tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)[None].numpy())
    if not images:
        raise ValueError(f"the {split or data_cfg.val_split} split yielded no images")
    return images
