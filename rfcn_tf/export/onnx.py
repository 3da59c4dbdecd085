"""ONNX export of the serving graph (tf2onnx) and its check with onnxruntime on the CPU.

What is converted: the exported SavedModel's ``serving_default`` signature, resize, padding,
detection and normalization included, so the ONNX model has the same contract as the
signature: input ``input_tensor`` uint8 [N, H, W, 3] (N, H, W dynamic; one size per batch),
outputs those of ``rfcn_tf.export.contract`` (``detection_boxes`` float32 [N, M, 4] normalized
yxyx, ``detection_scores`` [N, M], ``detection_classes`` float32 [N, M] in 1..C,
``num_detections`` float32 [N], and the OD API's multiclass, anchor-index and raw outputs). The
encoded-image signatures are not converted (ONNX has no image decoder; decode before calling
the model).

The check (``verify_onnx``) runs both on the same images and compares the detections:
``num_detections`` exactly, then each detection to one of the other side with the same class
and box and score within ``atol``; where two candidate boxes have the same score to float32
round-off (flat image regions pool to identical features), the runtimes' NMS may keep
different ones: such "tie swaps" are counted and reported, and capped (``compare_detections``). The default ``atol`` is 1e-3 (normalized
box coordinates and scores): where the resize scale is exact (640x480 -> 320x240) the two
runtimes agree to ~1e-6, but otherwise TF's and onnxruntime's bilinear interpolations differ by
~1e-3 grey levels, so 0.1-0.5 % of the resized pixels round to the neighbouring uint8 value
and scores move by up to ~3e-4 (measured on BCCD crops, tests/export/test_deploy_onnx.py). The first op tf2onnx cannot map is reported by name
(``OnnxConversionError``) instead of leaving a model that fails to load.

Going on to TensorRT (outside this machine)::

    trtexec --onnx=export/rfcn_onnx/1/model.onnx --saveEngine=rfcn_fp16.plan --fp16 \\
        --minShapes=input_tensor:1x64x64x3 --optShapes=input_tensor:4x600x1000x3 \\
        --maxShapes=input_tensor:8x1333x1333x3

(``--int8 --calib=<calibration cache>`` for INT8). The graph is data-dependent (NMS,
top-k, gathers of a variable number of boxes): whether every node maps to a TensorRT layer
depends on the TensorRT version, so read trtexec's parser log; this was not run here (no
TensorRT on this machine).

Shape shorthand: H/W image height/width, M max detections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from rfcn_tf.export.contract import INPUT_IMAGE, OUTPUT_KEYS, SIGNATURE_IMAGE

DEFAULT_OPSET = 17
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


class OnnxConversionError(RuntimeError):
    """tf2onnx could not map some TensorFlow ops; ``ops`` names them."""

    def __init__(self, message: str, ops: Sequence[str] = ()):
        super().__init__(message)
        self.ops = list(ops)


class OnnxMismatchError(AssertionError):
    """onnxruntime's detections differ from the SavedModel's beyond the tolerance."""


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def export_onnx(
    saved_model_dir: os.PathLike,
    *,
    output_path: os.PathLike,
    opset: int = DEFAULT_OPSET,
    signature: str = SIGNATURE_IMAGE,
    loaded: Any = None,
) -> Path:
    """Converts ``signature`` of a SavedModel to an ONNX file.

    Args:
      saved_model_dir: a version folder written by ``rfcn_tf.export.export_saved_model``.
      output_path: the ``.onnx`` file to write (parent folders are created).
      opset: ONNX opset (17 by default).
      signature: the signature to convert; its inputs must be numeric tensors.
      loaded: ``tf.saved_model.load(saved_model_dir)`` when the caller has it already (a load
        takes seconds); loaded here otherwise.

    Returns:
      ``output_path``.

    Raises:
      OnnxConversionError: naming the TensorFlow ops left unconverted or the ONNX checker's
        complaint (nothing is left at ``output_path`` then).
    """
    import onnx
    import tf2onnx

    _check_signature(saved_model_dir, signature)  # from the proto: fails before loading
    if loaded is None:
        loaded = tf.saved_model.load(str(saved_model_dir))
    function = loaded.signatures[signature]
    _, input_specs = function.structured_input_signature
    specs = [
        tf.TensorSpec(spec.shape, spec.dtype, name=name)
        for name, spec in sorted(input_specs.items())
    ]
    names = [spec.name for spec in specs]

    @tf.function(input_signature=specs)
    def wrapped(*args):
        return function(**dict(zip(names, args)))

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    capture = _Capture()
    tf2onnx_logger = logging.getLogger("tf2onnx")
    tf2onnx_logger.addHandler(capture)

    def convert(catch_errors: bool):
        with _tf2onnx_catch_errors(catch_errors):
            return tf2onnx.convert.from_function(
                wrapped,
                input_signature=specs,
                opset=opset,
                output_path=None,
                custom_rewriter=[select_as_where, cast_resize_input_to_float],
            )[0]

    try:
        try:
            model_proto = convert(catch_errors=False)
        except Exception:
            # An optimizer (or the conversion) raised: redo it the way tf2onnx does by default,
            # which skips a failing optimizer with a warning and reports any other error.
            capture.messages.clear()
            model_proto = convert(catch_errors=True)
    except Exception as exc:
        raise OnnxConversionError(
            f"tf2onnx failed on {saved_model_dir} ({signature}): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        tf2onnx_logger.removeHandler(capture)
    leftover = sorted(
        {
            node.op_type
            for node in _all_nodes(model_proto.graph)
            if node.domain not in _STANDARD_DOMAINS or not onnx.defs.has(node.op_type, node.domain)
        }
    )
    if leftover:
        detail = "; ".join(m for m in capture.messages if "nsupported" in m)
        raise OnnxConversionError(
            f"tf2onnx (opset {opset}) left TensorFlow ops it cannot convert: {leftover}"
            + (f" ({detail})" if detail else ""),
            ops=leftover,
        )
    fix_loop_carried_types(model_proto)
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as exc:
        raise OnnxConversionError(f"the converted model fails onnx.checker: {exc}") from exc
    onnx.save(model_proto, str(output_path))
    return output_path


@contextlib.contextmanager
def _tf2onnx_catch_errors(enabled: bool):
    """Sets tf2onnx's ``TF2ONNX_CATCH_ERRORS`` switch for one conversion.

    With it on (tf2onnx's default for models under 2 GB) the optimizer deep-copies the whole
    ONNX graph before each of its ~12 passes, every round, so that a failing pass can be
    skipped: about a quarter of a conversion's time on the tiny test model. ``export_onnx``
    converts with it off and, only if that raises, once more with it on: the same passes run
    in the same order, so the model is the same whenever no pass fails. tf2onnx 1.17 turns the
    safety copies off whenever the variable is set, whatever its value (it compares the
    variable's name, not its value, with "TRUE"), so "on" unsets it."""
    key = "TF2ONNX_CATCH_ERRORS"
    previous = os.environ.get(key)
    if enabled:
        os.environ.pop(key, None)
    else:
        os.environ[key] = "FALSE"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _check_signature(saved_model_dir: os.PathLike, signature: str) -> None:
    """Raises ValueError unless ``signature`` exists and takes numeric tensors only."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    signatures = proto.meta_graphs[0].signature_def
    if signature not in signatures:
        raise ValueError(
            f"{saved_model_dir} has no signature {signature!r} (it has {sorted(signatures)})"
        )
    for name, info in signatures[signature].inputs.items():
        if info.dtype == types_pb2.DT_STRING:
            raise ValueError(
                f"signature {signature!r} takes the string input {name!r}; ONNX "
                f"has no image decoder: convert the uint8 signature "
                f"{SIGNATURE_IMAGE!r}"
            )


def select_as_where(graph, ops):
    """tf2onnx rewriter: convert every TF Select/SelectV2 (``tf.where``) to ONNX ``Where``.

    tf2onnx 1.17 turns ``tf.where(c, x, y)`` on floats into ``c * x + (1 - c) * y`` unless it
    can prove statically that x or y holds inf/NaN; the model masks scores with
    ``tf.where(keep, logits, -inf)`` built by ``tf.fill`` at run time, where that arithmetic
    gives ``0 * -inf = NaN`` everywhere (every proposal lost). tf2onnx's own ``handles_nan``
    attribute (which its TFLite rewriter sets too) selects the exact ``Where`` mapping.
    """
    for op in ops:
        if op.type in ("Select", "SelectV2"):
            op.set_attr("handles_nan", True)
    return ops


def cast_resize_input_to_float(graph, ops):
    """tf2onnx rewriter: feed TF's image resizes float32, as TF computes them.

    TF's ``ResizeBilinear`` takes a uint8 image and returns float32 (``tf.image.resize`` on
    the uint8 image, as ``rfcn_tf.data.transforms.resize_image`` calls it); tf2onnx 1.17 maps
    it to an ONNX ``Resize`` of the uint8 tensor, whose output is uint8, and onnxruntime rejects
    the graph (``Type 'tensor(uint8)' of input parameter ... of operator (Round)``). Casting the
    input to float32 first gives what TF computes (TF's result is identical for a uint8 image
    and its float32 cast).
    """
    from onnx import TensorProto

    for op in ops:
        if op.type in ("ResizeBilinear", "ResizeBicubic", "ResizeArea", "ResizeNearestNeighbor"):
            source = op.input[0]
            if graph.get_dtype(source) not in (TensorProto.FLOAT, None):
                cast = graph.insert_new_node_on_input(op, "Cast", source, to=TensorProto.FLOAT)
                graph.set_dtype(cast.output[0], TensorProto.FLOAT)
                graph.copy_shape(source, cast.output[0])
    return graph.get_nodes()


def fix_loop_carried_types(model_proto) -> int:
    """Casts Loop inputs whose element type differs from the loop body's declared input.

    tf2onnx 1.17 converts ``tf.map_fn`` (a TF while loop) into an ONNX ``Loop`` whose trip
    count is an int64 constant; when TF had constant-folded the map's int32 length to the same
    value (a batch of 1, as in the serving graph), tf2onnx passes that one int64 initializer
    both as the trip count and as the loop-carried int32 length, and onnxruntime rejects the
    model ("Tensor element type mismatch. 7 != 6"). Inserting a Cast to the body's type is
    exact (the value is a small count). Only initializers and typed value_infos are fixed;
    returns the number of Casts inserted.
    """
    import onnx
    from onnx import helper

    graph = model_proto.graph
    inferred = onnx.shape_inference.infer_shapes(model_proto)
    types = {i.name: i.data_type for i in graph.initializer}
    for info in list(inferred.graph.value_info) + list(graph.input):
        if info.type.tensor_type.elem_type:
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    inserted = 0
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Loop":
            body = next(a.g for a in node.attribute if a.name == "body")
            # Loop inputs: trip count, condition, carried values...; body inputs: iteration
            # number, condition, carried values... (same order).
            for index in range(2, len(node.input)):
                outer = node.input[index]
                want = body.input[index].type.tensor_type.elem_type
                have = types.get(outer)
                if outer and want and have and have != want:
                    cast_name = f"{outer}__cast_to_{want}_{inserted}"
                    new_nodes.append(
                        helper.make_node("Cast", [outer], [cast_name], to=want, name=cast_name)
                    )
                    node.input[index] = cast_name
                    inserted += 1
        new_nodes.append(node)
    if inserted:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return inserted


def _all_nodes(graph) -> Iterable:
    """Nodes of a graph and of the subgraphs of its Loop/If/Scan nodes."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def onnx_session(onnx_path: os.PathLike, *, threads: int | None = None):
    """An onnxruntime CPU session for ``onnx_path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def run_onnx(session, image: np.ndarray) -> dict[str, np.ndarray]:
    """Runs the converted signature: uint8 [N, H, W, 3] -> outputs dict (OUTPUT_KEYS and the
    contract's other outputs)."""
    names = [o.name for o in session.get_outputs()]
    missing = set(OUTPUT_KEYS) - set(names)
    if missing:
        raise ValueError(f"the ONNX model lacks outputs {sorted(missing)}; it has {names}")
    values = session.run(names, {INPUT_IMAGE: np.asarray(image, np.uint8)})
    return dict(zip(names, values))


@dataclasses.dataclass(frozen=True)
class OnnxComparison:
    """How the ONNX model's detections compared with the SavedModel's.

    Attributes:
      max_abs_diff: largest |difference| of scores and normalized box coordinates over the
        matched detections (tie swaps excluded: their boxes differ by construction).
      detections: detections compared (all images).
      tie_swaps: detections whose class and score match one of the other side to float32
        round-off but whose box does not: of two candidate boxes with the same score (flat
        image regions give identical pooled features), the runtimes' NMS kept different ones.
    """

    max_abs_diff: float
    detections: int
    tie_swaps: int

    def __add__(self, other: OnnxComparison) -> OnnxComparison:
        return OnnxComparison(
            max(self.max_abs_diff, other.max_abs_diff),
            self.detections + other.detections,
            self.tie_swaps + other.tie_swaps,
        )

    def describe(self) -> str:
        text = f"max |diff| {self.max_abs_diff:.1e} over {self.detections} detections"
        if self.tie_swaps:
            text += f", {self.tie_swaps} of them kept another box of the same score (NMS tie)"
        return text


TIE_TOLERANCE = 1e-6  # scores this close are float32 ties (one ulp near 1 is 6e-8)


def compare_detections(
    expected: dict, actual: dict, *, atol: float, max_tie_fraction: float = 0.25
) -> OnnxComparison:
    """Compares two outputs of the serving signature (SavedModel vs ONNX) for one image.

    Counts must be equal. Rows are matched one to one, in order where possible, else to an
    unused row with the same class and score and box within ``atol`` (two detections of equal
    score may leave NMS in either order). A row left over must have an unused partner of the
    same class whose score is equal to ``TIE_TOLERANCE`` (a tie swap, see ``OnnxComparison``);
    at most ``max_tie_fraction`` of the rows may be tie swaps, so a conversion that gets boxes
    wrong while keeping scores still fails.

    Raises:
      OnnxMismatchError: counts differ, a row has no match, or too many tie swaps.
    """
    n_exp = int(np.asarray(expected["num_detections"]).reshape(-1)[0])
    n_act = int(np.asarray(actual["num_detections"]).reshape(-1)[0])
    if n_exp != n_act:
        raise OnnxMismatchError(f"num_detections: SavedModel {n_exp}, ONNX {n_act}")
    cls_e = np.asarray(expected["detection_classes"])[0, :n_exp]
    cls_a = np.asarray(actual["detection_classes"])[0, :n_act]
    box_e = np.asarray(expected["detection_boxes"], np.float64)[0, :n_exp]
    box_a = np.asarray(actual["detection_boxes"], np.float64)[0, :n_act]
    sc_e = np.asarray(expected["detection_scores"], np.float64)[0, :n_exp]
    sc_a = np.asarray(actual["detection_scores"], np.float64)[0, :n_act]

    def gap(i, j):
        if cls_e[i] != cls_a[j]:
            return np.inf
        return max(abs(sc_e[i] - sc_a[j]), float(np.abs(box_e[i] - box_a[j]).max()))

    used = np.zeros(n_act, bool)
    worst = 0.0
    leftover = []
    for i in range(n_exp):
        j = i if not used[i] and gap(i, i) <= atol else None
        if j is None:
            free = [k for k in np.flatnonzero(~used) if gap(i, k) <= atol]
            if not free:
                leftover.append(i)
                continue
            j = min(free, key=lambda k: gap(i, k))
        used[j] = True
        worst = max(worst, gap(i, j))
    for i in leftover:
        ties = [
            k
            for k in np.flatnonzero(~used)
            if cls_a[k] == cls_e[i] and abs(sc_a[k] - sc_e[i]) <= TIE_TOLERANCE
        ]
        if not ties:
            raise OnnxMismatchError(
                f"SavedModel detection {i} (class {cls_e[i]:g}, score {sc_e[i]:.6f}, box "
                f"{np.round(box_e[i], 5).tolist()}) has no ONNX match within atol {atol}; "
                f"ONNX row {i}: class {cls_a[i]:g}, score {sc_a[i]:.6f}, box "
                f"{np.round(box_a[i], 5).tolist()}"
            )
        used[min(ties, key=lambda k: abs(sc_a[k] - sc_e[i]))] = True
    if n_exp and len(leftover) > max_tie_fraction * n_exp:
        raise OnnxMismatchError(
            f"{len(leftover)} of {n_exp} detections match only by class "
            f"and score, not box (more than {max_tie_fraction:.0%}: not "
            "NMS ties but wrong boxes)"
        )
    return OnnxComparison(worst, n_exp, len(leftover))


def verify_onnx(
    onnx_path: os.PathLike,
    saved_model_dir: os.PathLike,
    *,
    images: Sequence[np.ndarray] | None = None,
    atol: float = 1e-3,
    loaded: Any = None,
) -> OnnxComparison:
    """Runs the ONNX model (onnxruntime, CPU) and the SavedModel's ``serving_default`` on the
    same images and compares the detections (``compare_detections``).

    Args:
      images: uint8 [N, H, W, 3] each (a batch of one size); by default three seeded random
        images of different sizes (random pixels still give the model's full path: proposals, NMS, padding).
      atol: tolerance on normalized boxes and on scores (module docstring: why 1e-3).
      loaded: ``tf.saved_model.load(saved_model_dir)`` when the caller has it already.

    Returns:
      the ``OnnxComparison`` summed over the images.

    Raises:
      OnnxMismatchError: naming the image and the first detection without a match.
    """
    if images is None:
        rng = np.random.default_rng(0)
        images = [
            rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
            for h, w in ((120, 160), (97, 203), (256, 256))
        ]
    if loaded is None:
        loaded = tf.saved_model.load(str(saved_model_dir))
    function = loaded.signatures[SIGNATURE_IMAGE]
    session = onnx_session(onnx_path)
    total = OnnxComparison(0.0, 0, 0)
    for index, image in enumerate(images):
        expected = {k: v.numpy() for k, v in function(**{INPUT_IMAGE: tf.constant(image)}).items()}
        actual = run_onnx(session, image)
        for row in range(np.shape(image)[0]):  # each image of a batch on its own
            try:
                total = total + compare_detections(
                    {k: v[row : row + 1] for k, v in expected.items()},
                    {k: v[row : row + 1] for k, v in actual.items()},
                    atol=atol,
                )
            except OnnxMismatchError as exc:
                raise OnnxMismatchError(
                    f"input {index} of shape {np.shape(image)}, image {row}: {exc}"
                ) from None
    return total


# --------------------------------------------------------------------------------------------
# INT8 (static quantization for CPU serving)

# What is quantized: the convolutions (backbone, RPN and the position-sensitive score maps,
# the bulk of the compute). NMS, top-k, the PS-RoI pooling gathers and the softmax stay fp32:
# they are data-dependent index work, and quantizing the pooled scores would move the
# detection scores the NMS threshold compares.
INT8_OP_TYPES = ("Conv",)

# Activations are unsigned (U8S8: uint8 activations, int8 weights), measured: with onnxruntime
# 1.32 on an AVX-512 VNNI x86 CPU, int8 (S8S8) activations let its QDQ fusion turn only 9 of
# the 20 convolutions of a trained small-backbone model into QLinearConv (the other 11 ran as
# fp32 Conv on dequantized inputs, the Q/DQ pairs pure overhead: 1.03x fp32's speed), uint8
# ones all 20 (1.89x). On x86 CPUs without VNNI, U8S8's VPMADDUBSW can saturate; onnxruntime
# advises reduce_range there. "int8" stays available (ARM runs S8S8 natively).
INT8_ACTIVATION_TYPES = ("uint8", "int8")


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader over uint8 [1, H, W, 3] images."""

    def __init__(self, images: Sequence[np.ndarray]):
        self._images = iter([np.asarray(image, np.uint8) for image in images])

    def get_next(self):
        image = next(self._images, None)
        return None if image is None else {INPUT_IMAGE: image}


def quantize_onnx_int8(
    onnx_path: os.PathLike,
    *,
    output_path: os.PathLike,
    calibration_images: Sequence[np.ndarray],
    per_channel: bool = True,
    op_types: Sequence[str] = INT8_OP_TYPES,
    activation_type: str = "uint8",
) -> Path:
    """Statically quantizes an exported ONNX model to INT8 (onnxruntime.quantization).

    Activations are calibrated (min/max) on ``calibration_images`` run through the model; the
    weights of ``op_types`` nodes are quantized per output channel (``per_channel``); QDQ
    format, int8 weights and ``activation_type`` activations (``INT8_ACTIVATION_TYPES``:
    why uint8 by default). Nodes of other types stay fp32 (``INT8_OP_TYPES``: why).

    Args:
      onnx_path: the fp32 model of ``export_onnx``.
      output_path: the INT8 ``.onnx`` to write.
      calibration_images: uint8 [1, H, W, 3] dataset images (a few dozen).
      activation_type: "uint8" (U8S8, the fast path of onnxruntime's x86 kernels) or "int8".

    Returns:
      ``output_path``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if activation_type not in INT8_ACTIVATION_TYPES:
        raise ValueError(
            f"activation_type must be one of {INT8_ACTIVATION_TYPES}, got {activation_type!r}"
        )
    if not calibration_images:
        raise ValueError("INT8 quantization needs calibration images (uint8 [1, H, W, 3])")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(onnx_path),
        str(output_path),
        _CalibrationReader(calibration_images),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=list(op_types),
    )
    return output_path


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of yxyx boxes a [P, 4] and b [Q, 4] -> [P, Q]."""
    y1 = np.maximum(a[:, None, 0], b[None, :, 0])
    x1 = np.maximum(a[:, None, 1], b[None, :, 1])
    y2 = np.minimum(a[:, None, 2], b[None, :, 2])
    x2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def detection_overlap(
    reference: dict, other: dict, *, min_score: float = 0.0
) -> tuple[float, int, int]:
    """How well ``other``'s detections (one image, batch of 1) cover ``reference``'s.

    Each reference detection scoring >= ``min_score`` is matched greedily (highest score
    first) to the unused ``other`` detection of the same class with the largest IoU.

    Returns:
      (mean IoU of the matched pairs, matched, reference detections); (1.0, 0, 0) when the
      reference has none.
    """

    def rows(out):
        n = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        keep = np.asarray(out["detection_scores"])[0, :n] >= min_score
        return (
            np.asarray(out["detection_boxes"], np.float64)[0, :n][keep],
            np.asarray(out["detection_classes"])[0, :n][keep],
        )

    ref_boxes, ref_classes = rows(reference)
    oth_boxes, oth_classes = rows(other)
    if not len(ref_boxes):
        return 1.0, 0, 0
    ious = _iou(ref_boxes, oth_boxes) if len(oth_boxes) else np.zeros((len(ref_boxes), 0))
    used = np.zeros(len(oth_boxes), bool)
    matched = []
    for i in range(len(ref_boxes)):
        candidates = np.flatnonzero((oth_classes == ref_classes[i]) & ~used)
        if candidates.size:
            j = candidates[np.argmax(ious[i, candidates])]
            if ious[i, j] > 0:
                used[j] = True
                matched.append(ious[i, j])
    return (float(np.mean(matched)) if matched else 0.0), len(matched), len(ref_boxes)
