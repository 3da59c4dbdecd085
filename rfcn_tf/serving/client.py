"""A TF Serving client for the exported R-FCN detector: REST and gRPC.

What the export serves (DESIGN.md, "Export"; ``rfcn_tf.export``):

- ``serving_default``: input ``input_tensor`` uint8 ``[1, H, W, 3]`` RGB, any H, W.
- ``serving_encoded``: input ``encoded_image_string_tensor`` string ``[1]``, the bytes of a JPEG,
  PNG, GIF or BMP file (over REST as ``{"b64": "<base64>"}``).
- outputs of both: ``detection_boxes`` float32 ``[1, M, 4]`` normalized yxyx (w.r.t. the
  original image), ``detection_scores`` float32 ``[1, M]``, ``detection_classes`` float32
  ``[1, M]`` in 1..C, ``num_detections`` float32 ``[1]``; rows past ``num_detections`` are zero.

Shape shorthand: M padded detections (the model's ``max_detections``), D real detections
(``num_detections``), H/W original image height/width in pixels.

The client turns those outputs into the detections dict every part of rfcn_tf uses for one
image (the evaluation's format, INTERFACES.md), trimmed to the real detections:

    {"boxes": float32 [D, 4] yxyx, pixels of the ORIGINAL image,
     "boxes_normalized": float32 [D, 4] yxyx in [0, 1],
     "scores": float32 [D],
     "classes": int32 [D] in 1..C (0 is background and never appears),
     "num_detections": int D}

``detections_from_outputs`` does that conversion for any source of signature outputs (REST,
gRPC, or the SavedModel loaded in-process), so remote and local inference return equal dicts.

Transports:

- REST (``RestClient``): ``POST {url}/v1/models/{model}[/versions/{v}]:predict`` with
  ``{"signature_name": ..., "instances": [...]}`` (TF Serving's row format); needs only
  ``requests`` and NumPy. Sending raw pixels as JSON is large (about 4 bytes per channel
  value): prefer the encoded signature over REST.
- gRPC (``GrpcClient``): ``tensorflow_serving.apis.PredictionService/Predict`` with a
  ``PredictRequest``; needs ``grpcio`` and ``tensorflow-serving-api`` (installed with
  ``--no-deps`` beside tensorflow-cpu, see the README), which imports TensorFlow.

Every failure the server reports (HTTP status and ``{"error": ...}`` body, or a gRPC status
and its details) is raised as ``ServingError`` carrying the server's own message.

Command line::

    python -m rfcn_tf.serving.client IMAGE [IMAGE ...] --model rfcn \\
        [--url http://localhost:8501 | --grpc localhost:8500] [--version N] [--raw-pixels]
"""

from __future__ import annotations

import abc
import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

SIGNATURE_IMAGE = "serving_default"
SIGNATURE_ENCODED = "serving_encoded"
INPUT_IMAGE = "input_tensor"
INPUT_ENCODED = "encoded_image_string_tensor"
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")

ImageInput = Union[np.ndarray, bytes]


class ServingError(RuntimeError):
    """A request the model server refused or could not answer.

    Attributes:
      status: the HTTP status code (int) for REST, the gRPC status code name (str, e.g.
        ``"INVALID_ARGUMENT"``) for gRPC, or None when the server could not be reached.
      server_message: the server's own error text (TF Serving's ``{"error": ...}`` or the
        gRPC status details), or the transport's error when unreachable.
      target: the URL or gRPC target the request went to.
    """

    def __init__(self, server_message: str, *, status: Union[int, str, None], target: str):
        self.status = status
        self.server_message = server_message
        self.target = target
        where = f"{target} answered {status}" if status is not None else f"{target} unreachable"
        super().__init__(f"{where}: {server_message}")


# --------------------------------------------------------------------------------------------
# Output conversion (shared by REST, gRPC and in-process inference)


def detections_from_outputs(outputs: Mapping[str, Any], *, image_height: int,
                            image_width: int) -> dict[str, Any]:
    """Serving-signature outputs of one image -> the detections dict (module docstring).

    Args:
      outputs: ``detection_boxes`` [1, M, 4] normalized yxyx, ``detection_scores`` [1, M],
        ``detection_classes`` [1, M] (float in 1..C), ``num_detections`` [1]; array-likes
        (NumPy, nested lists, or eager tensors).
      image_height, image_width: size of the ORIGINAL image in pixels (the boxes are normalized
        w.r.t. it).

    Returns:
      the detections dict: ``boxes`` float32 [D, 4] yxyx original pixels, ``boxes_normalized``
      float32 [D, 4], ``scores`` float32 [D], ``classes`` int32 [D], ``num_detections`` int D.
    """
    missing = [k for k in OUTPUT_KEYS if k not in outputs]
    if missing:
        raise ValueError(f"serving outputs lack {missing}; got keys {sorted(outputs)}")
    if image_height <= 0 or image_width <= 0:
        raise ValueError(f"image size must be positive, got {image_height}x{image_width}")
    boxes = np.asarray(outputs["detection_boxes"], dtype=np.float32)
    scores = np.asarray(outputs["detection_scores"], dtype=np.float32)
    classes = np.asarray(outputs["detection_classes"])
    num = np.asarray(outputs["num_detections"]).reshape(-1)
    if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4:
        raise ValueError(f"detection_boxes must be [1, M, 4], got {boxes.shape}")
    if scores.shape != boxes.shape[:2] or classes.shape != boxes.shape[:2]:
        raise ValueError(f"detection_scores {scores.shape} and detection_classes "
                         f"{classes.shape} must be [1, M] with M = {boxes.shape[1]}")
    if num.shape != (1,):
        raise ValueError(f"num_detections must be [1], got shape {num.shape}")
    count = int(round(float(num[0])))
    if not 0 <= count <= boxes.shape[1]:
        raise ValueError(f"num_detections = {count} outside [0, {boxes.shape[1]}]")
    normalized = boxes[0, :count]
    scale = np.array([image_height, image_width, image_height, image_width], np.float32)
    return {
        "boxes": normalized * scale,
        "boxes_normalized": normalized,
        "scores": scores[0, :count],
        "classes": np.rint(classes[0, :count]).astype(np.int32),
        "num_detections": count,
    }


def image_size_of(encoded: bytes) -> tuple[int, int]:
    """(height, width) in pixels of an encoded image, from its header (Pillow)."""
    from PIL import Image  # local: only needed for encoded images

    try:
        with Image.open(io.BytesIO(encoded)) as img:
            width, height = img.size
    except Exception as exc:  # Pillow raises several types for non-images
        raise ValueError(f"not a readable image ({len(encoded)} bytes): {exc}") from exc
    return height, width


def load_image(path: Union[str, Path]) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB (Pillow; grayscale and alpha are converted)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _as_image_batch(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != 1 or array.shape[3] != 3:
        raise ValueError(f"image must be [H, W, 3] or [1, H, W, 3] RGB, got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB pixels, got dtype {array.dtype}")
    return array


# --------------------------------------------------------------------------------------------
# Transports


class _Client(abc.ABC):
    """What REST and gRPC share: one model (and optional version) on one server."""

    target: str

    def __init__(self, model: str, *, version: Optional[int], timeout: float):
        if not model or "/" in model or ":" in model:
            raise ValueError(f"model name must be non-empty without '/' or ':', got {model!r}")
        if version is not None and int(version) < 0:
            raise ValueError(f"version must be a non-negative integer, got {version}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        self.model = model
        self.version = None if version is None else int(version)
        self.timeout = float(timeout)

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, Any], *,
                signature_name: str = SIGNATURE_IMAGE) -> dict[str, np.ndarray]:
        """Runs one signature. ``inputs`` maps input names to arrays (batch dimension included;
        bytes or a [1] object array of bytes for string inputs). Returns output name -> array
        with the batch dimension."""

    def detect(self, image: ImageInput, *, image_size: Optional[tuple[int, int]] = None
               ) -> dict[str, Any]:
        """Detections for one image (the dict of ``detections_from_outputs``).

        Args:
          image: uint8 [H, W, 3] (or [1, H, W, 3]) RGB pixels -> ``serving_default``; or the
            bytes of an encoded image file -> ``serving_encoded``.
          image_size: (height, width) of the original image; read from the encoded image's
            header when None.
        """
        if isinstance(image, (bytes, bytearray)):
            encoded = bytes(image)
            height, width = image_size if image_size is not None else image_size_of(encoded)
            outputs = self.predict({INPUT_ENCODED: np.array([encoded], dtype=object)},
                                   signature_name=SIGNATURE_ENCODED)
        else:
            batch = _as_image_batch(image)
            height, width = batch.shape[1:3]
            outputs = self.predict({INPUT_IMAGE: batch}, signature_name=SIGNATURE_IMAGE)
        return detections_from_outputs(outputs, image_height=height, image_width=width)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _json_value(value: Any) -> Any:
    """One input tensor (or one batch item of it) -> its JSON value; bytes become
    {"b64": ...} (TF Serving's convention for binary strings)."""
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind == "S":
        if array.ndim == 0:
            return _json_value(array.item())
        return [_json_value(item) for item in array]
    return array.tolist()


class RestClient(_Client):
    """TF Serving's REST predict API (``--rest_api_port``, 8501 in the Docker image).

    Args:
      url: server root, e.g. ``http://localhost:8501``.
      model: the model name (``MODEL_NAME`` of the server; the export's folder name).
      version: a numeric version, or None for the server's latest.
      timeout: seconds per request.
    """

    def __init__(self, url: str, model: str, *, version: Optional[int] = None,
                 timeout: float = 60.0):
        super().__init__(model, version=version, timeout=timeout)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        import requests  # local: only the REST path needs it

        self._requests = requests
        self._session = requests.Session()
        self.url = url.rstrip("/")
        version_part = f"/versions/{self.version}" if self.version is not None else ""
        self.model_url = f"{self.url}/v1/models/{self.model}{version_part}"
        self.target = self.model_url

    def _call(self, method: str, url: str, body: Optional[dict] = None) -> dict:
        try:
            if method == "POST":
                response = self._session.post(url, data=json.dumps(body), timeout=self.timeout,
                                              headers={"Content-Type": "application/json"})
            else:
                response = self._session.get(url, timeout=self.timeout)
        except self._requests.RequestException as exc:
            raise ServingError(f"{type(exc).__name__}: {exc}", status=None, target=url) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200:
            message = payload.get("error") if isinstance(payload, dict) else None
            if message is None:
                message = response.text.strip() or response.reason
            raise ServingError(str(message), status=response.status_code, target=url)
        if not isinstance(payload, dict):
            raise ServingError(f"answer is not a JSON object: {response.text[:200]!r}",
                               status=response.status_code, target=url)
        return payload

    def predict(self, inputs: Mapping[str, Any], *,
                signature_name: str = SIGNATURE_IMAGE) -> dict[str, np.ndarray]:
        """Row format: each input's batch of one becomes one instance; ``predictions[0]`` (a
        dict of outputs without the batch dimension) gets the batch dimension back."""
        arrays = {name: np.asarray(value) if not isinstance(value, (bytes, bytearray))
                  else np.array([bytes(value)], dtype=object) for name, value in inputs.items()}
        for name, array in arrays.items():
            if array.ndim == 0 or array.shape[0] != 1:
                raise ValueError(f"input {name!r} must have a batch dimension of 1, "
                                 f"got shape {array.shape}")
        if len(arrays) == 1:
            (array,) = arrays.values()
            instance: Any = _json_value(array[0])
        else:
            instance = {name: _json_value(array[0]) for name, array in arrays.items()}
        payload = self._call("POST", f"{self.model_url}:predict",
                             {"signature_name": signature_name, "instances": [instance]})
        predictions = payload.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != 1:
            raise ServingError(f"expected 'predictions' with one instance, got "
                               f"{str(payload)[:200]}", status=200, target=self.model_url)
        first = predictions[0]
        if not isinstance(first, dict):
            raise ServingError(f"expected named outputs in predictions[0], got "
                               f"{str(first)[:200]}", status=200, target=self.model_url)
        return {name: np.asarray(value)[None] for name, value in first.items()}

    def model_status(self) -> dict:
        """``GET /v1/models/{model}[/versions/{v}]``: TF Serving's model version status JSON."""
        return self._call("GET", self.model_url)

    def close(self) -> None:
        self._session.close()


class GrpcClient(_Client):
    """TF Serving's gRPC ``PredictionService.Predict`` (``--port``, 8500 in the Docker image).

    Args:
      target: ``host:port`` of the gRPC server.
      model, version, timeout: as for ``RestClient``.
      max_message_bytes: send/receive limit of the channel (a 1000x1000 RGB image is 3 MB).
    """

    def __init__(self, target: str, model: str, *, version: Optional[int] = None,
                 timeout: float = 60.0, max_message_bytes: int = 64 << 20):
        super().__init__(model, version=version, timeout=timeout)
        if "://" in target or ":" not in target:
            raise ValueError(f"gRPC target must be host:port, got {target!r}")
        try:
            import grpc
            import tensorflow as tf
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        except ImportError as exc:
            raise ImportError(
                f"the gRPC client needs grpcio and tensorflow-serving-api ({exc}); install with "
                "`pip install --no-deps 'tensorflow-serving-api>=2.21,<2.22'` (it names the "
                "`tensorflow` distribution, which tensorflow-cpu satisfies in practice)") from exc
        self._grpc = grpc
        self._tf = tf
        self._predict_pb2 = predict_pb2
        self.target = target
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, inputs: Mapping[str, Any], *,
                signature_name: str = SIGNATURE_IMAGE) -> dict[str, np.ndarray]:
        request = self._predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        for name, value in inputs.items():
            if isinstance(value, (bytes, bytearray)):
                value = np.array([bytes(value)], dtype=object)
            request.inputs[name].CopyFrom(self._tf.make_tensor_proto(value))
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as exc:
            code = exc.code()  # an unreachable server is UNAVAILABLE
            status = code.name if code is not None else "UNKNOWN"
            raise ServingError(exc.details() or str(exc), status=status,
                               target=self.target) from exc
        return {name: self._tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


# --------------------------------------------------------------------------------------------
# Command line


def read_labels(path: Union[str, Path]) -> list[str]:
    """``labels.txt`` of an export (line i, counting from 1, names class id i) -> names."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.serving.client",
        description="Send images to a TF Serving model exported by `python -m rfcn_tf.export` "
                    "and print its detections (boxes in original-image pixels, yxyx).")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG/PNG/GIF/BMP)")
    parser.add_argument("--model", default="rfcn",
                        help="model name on the server (MODEL_NAME; default: rfcn)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--url", default=None,
                           help="REST root, e.g. http://localhost:8501 (the default transport)")
    transport.add_argument("--grpc", default=None, metavar="HOST:PORT",
                           help="use gRPC at HOST:PORT instead of REST, e.g. localhost:8500")
    parser.add_argument("--version", type=int, default=None,
                        help="model version to query (default: the server's latest)")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="decode here and send uint8 pixels to serving_default instead of "
                             "the file's bytes to serving_encoded (large over REST)")
    parser.add_argument("--labels", default=None, metavar="LABELS_TXT",
                        help="the export's assets/labels.txt, to print class names")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="hide detections scoring below this (default: show all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image instead of text lines")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        names = read_labels(args.labels) if args.labels else None
        if args.grpc:
            client: _Client = GrpcClient(args.grpc, args.model, version=args.version,
                                         timeout=args.timeout)
        else:
            client = RestClient(args.url or "http://localhost:8501", args.model,
                                version=args.version, timeout=args.timeout)
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = 0
    started = time.perf_counter()
    with client:
        for path in args.images:
            try:
                if args.raw_pixels:
                    image: ImageInput = load_image(path)
                else:
                    image = Path(path).read_bytes()
                tic = time.perf_counter()
                dets = client.detect(image)
                seconds = time.perf_counter() - tic
            except (OSError, ValueError) as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                return 1
            except ServingError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                return 1
            keep = dets["scores"] >= args.min_score
            total += int(keep.sum())
            rows = []
            for box, score, cls in zip(dets["boxes"][keep], dets["scores"][keep],
                                       dets["classes"][keep]):
                name = names[cls - 1] if names and 1 <= cls <= len(names) else str(int(cls))
                rows.append({"class": int(cls), "name": name, "score": float(score),
                             "box_yxyx": [round(float(v), 1) for v in box]})
            if args.json:
                print(json.dumps({"image": str(path), "seconds": round(seconds, 4),
                                  "detections": rows}))
            else:
                for row in rows:
                    print(f"{path}\t{row['name']}\t{row['score']:.3f}\t"
                          + " ".join(f"{v:.1f}" for v in row["box_yxyx"]))
    transport_name = f"gRPC {args.grpc}" if args.grpc else f"REST {client.target}"
    print(f"{len(args.images)} image(s), {total} detection(s) scoring >= {args.min_score} "
          f"from {transport_name} in {time.perf_counter() - started:.2f} s",
          file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
