"""The TF Serving client library for the exported R-FCN detector: REST and gRPC.

What the export serves is ``rfcn_tf.export.contract`` (imported from there, TF-free):

- ``serving_default``: input ``input_tensor`` uint8 ``[N, H, W, 3]`` RGB, one size per batch.
- ``serving_encoded``: input ``encoded_image_string_tensor`` string ``[N]``, the bytes of JPEG,
  PNG, GIF, BMP or WebP files of any sizes (over REST as ``{"b64": "<base64>"}``).
- outputs (among others): ``detection_boxes`` float32 ``[N, M, 4]`` normalized yxyx (w.r.t.
  the original image), ``detection_scores`` float32 ``[N, M]``, ``detection_classes`` float32
  ``[N, M]`` in 1..C, ``num_detections`` float32 ``[N]``; rows past ``num_detections`` are zero.

Shape shorthand: N images per request, M padded detections (the model's ``max_detections``),
D real detections (``num_detections``), H/W original image height/width in pixels.

The client turns those outputs into the detections dict every part of rfcn_tf uses for one
image (the evaluation's format), trimmed to the real detections:

    {"boxes": float32 [D, 4] yxyx, pixels of the ORIGINAL image,
     "boxes_normalized": float32 [D, 4] yxyx in [0, 1],
     "scores": float32 [D],
     "classes": int32 [D] in 1..C (0 is background and never appears),
     "num_detections": int D}

``detections_from_outputs`` (one image) and ``detections_from_batch`` (N) do that conversion for
any source of signature outputs (REST, gRPC, or the SavedModel loaded in-process), so remote and
local inference return equal dicts. A response that is not a valid detection (a NaN or
infinite box or score, a class id outside 1..C or not an integer, a count outside [0, M]) is
refused with a ``ValueError`` naming the output, the image and the row: a server must not
hand such values to the caller as detections.

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

The command line over this module is ``python -m rfcn_tf.serving.client`` (a thin CLI).
"""

from __future__ import annotations

import abc
import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rfcn_tf.export.contract import (
    INPUT_ENCODED,
    INPUT_IMAGE,
    LABELS_FILENAME,
    OUTPUT_KEYS,
    SIGNATURE_ENCODED,
    SIGNATURE_IMAGE,
)

__all__ = [
    "LABELS_FILENAME",
    "GrpcClient",
    "RestClient",
    "ServingError",
    "detections_from_batch",
    "detections_from_outputs",
    "image_size_of",
    "load_image",
    "read_labels",
]

ImageInput = np.ndarray | bytes


class ServingError(RuntimeError):
    """A request the model server refused or could not answer.

    Attributes:
      status: the HTTP status code (int) for REST, the gRPC status code name (str, e.g.
        ``"INVALID_ARGUMENT"``) for gRPC, or None when the server could not be reached.
      server_message: the server's own error text (TF Serving's ``{"error": ...}`` or the
        gRPC status details), or the transport's error when unreachable.
      target: the URL or gRPC target the request went to.
    """

    def __init__(self, server_message: str, *, status: int | str | None, target: str):
        self.status = status
        self.server_message = server_message
        self.target = target
        where = f"{target} answered {status}" if status is not None else f"{target} unreachable"
        super().__init__(f"{where}: {server_message}")


# --------------------------------------------------------------------------------------------
# Output conversion (shared by REST, gRPC and in-process inference)


def detections_from_outputs(
    outputs: Mapping[str, Any],
    *,
    image_height: int,
    image_width: int,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Serving-signature outputs of ONE image (batch dimension 1) -> the detections dict.

    Args:
      outputs: ``detection_boxes`` [1, M, 4] normalized yxyx, ``detection_scores`` [1, M],
        ``detection_classes`` [1, M] (float in 1..C), ``num_detections`` [1]; array-likes
        (NumPy, nested lists, or eager tensors).
      image_height, image_width: size of the ORIGINAL image in pixels.
      num_classes: C when known (the labels' count): class ids above it are refused too.

    Returns:
      the detections dict (module docstring).

    Raises:
      ValueError: missing outputs, wrong shapes, or values that are not detections.
    """
    num = np.asarray(outputs["num_detections"]) if "num_detections" in outputs else None
    if num is not None and num.reshape(-1).shape != (1,):
        raise ValueError(f"num_detections must be [1], got shape {num.shape}")
    return detections_from_batch(outputs, [(image_height, image_width)], num_classes=num_classes)[0]


def detections_from_batch(
    outputs: Mapping[str, Any],
    image_sizes: Sequence[tuple[int, int]],
    *,
    num_classes: int | None = None,
) -> list[dict[str, Any]]:
    """Serving-signature outputs of N images -> one detections dict per image.

    Args:
      outputs: ``detection_boxes`` [N, M, 4], ``detection_scores`` [N, M],
        ``detection_classes`` [N, M], ``num_detections`` [N].
      image_sizes: N (height, width) of the ORIGINAL images in pixels.
      num_classes: C when known: class ids above it are refused.

    Raises:
      ValueError: naming the output, image and row of anything that is not a detection.
    """
    missing = [k for k in OUTPUT_KEYS if k not in outputs]
    if missing:
        raise ValueError(f"serving outputs lack {missing}; got keys {sorted(outputs)}")
    for height, width in image_sizes:
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
    boxes = np.asarray(outputs["detection_boxes"], dtype=np.float32)
    scores = np.asarray(outputs["detection_scores"], dtype=np.float32)
    classes = np.asarray(outputs["detection_classes"], dtype=np.float64)
    num = np.asarray(outputs["num_detections"], dtype=np.float64).reshape(-1)
    n = len(image_sizes)
    if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
        raise ValueError(f"detection_boxes must be [{n}, M, 4], got {boxes.shape}")
    if scores.shape != boxes.shape[:2] or classes.shape != boxes.shape[:2]:
        raise ValueError(
            f"detection_scores {scores.shape} and detection_classes "
            f"{classes.shape} must be [{n}, M] with M = {boxes.shape[1]}"
        )
    if num.shape != (n,):
        raise ValueError(f"num_detections must be [{n}], got shape {num.shape}")
    results = []
    for index, (height, width) in enumerate(image_sizes):
        where = f"image {index} of the response" if n > 1 else "the response"
        if not np.isfinite(num[index]) or num[index] != np.rint(num[index]):
            raise ValueError(f"num_detections of {where} is {float(num[index])}, not a count")
        count = int(num[index])
        if not 0 <= count <= boxes.shape[1]:
            raise ValueError(f"num_detections = {count} outside [0, {boxes.shape[1]}] in {where}")
        _check_rows(
            boxes[index, :count], scores[index, :count], classes[index, :count], where, num_classes
        )
        normalized = boxes[index, :count]
        scale = np.array([height, width, height, width], np.float32)
        results.append(
            {
                "boxes": normalized * scale,
                "boxes_normalized": normalized,
                "scores": scores[index, :count],
                "classes": np.rint(classes[index, :count]).astype(np.int32),
                "num_detections": count,
            }
        )
    return results


def _check_rows(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, where: str, num_classes: int | None
) -> None:
    """Refuses values a detection cannot have (issue: a server's NaN boxes or negative class
    ids were printed as detections)."""
    for name, values in (("detection_boxes", boxes), ("detection_scores", scores)):
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            row = int(bad[0][0])
            raise ValueError(
                f"the server returned a non-finite {name} value in {where}, "
                f"detection {row}: {np.asarray(values[row]).tolist()}"
            )
    bad = np.flatnonzero(
        ~np.isfinite(classes)
        | (classes != np.rint(classes))
        | (classes < 1)
        | ((classes > num_classes) if num_classes else False)
    )
    if bad.size:
        row = int(bad[0])
        allowed = f"1..{num_classes}" if num_classes else "1..C"
        raise ValueError(
            f"the server returned detection_classes {float(classes[row])} in "
            f"{where}, detection {row}: class ids must be integers in {allowed} "
            "(0 is background)"
        )


# EXIF orientations 5..8 turn the image by 90 degrees (rfcn_tf/images.py applies them all).
_EXIF_ORIENTATION = 0x0112


def image_size_of(encoded: bytes) -> tuple[int, int]:
    """(height, width) in pixels of an encoded image as the serving graph decodes it: from its
    header (Pillow), turned by the EXIF orientation (5..8 swap the sides), which the graph's
    decoder applies."""
    from PIL import Image  # local: only needed for encoded images

    try:
        with Image.open(io.BytesIO(encoded)) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as exc:  # Pillow raises several types for non-images
        raise ValueError(f"not a readable image ({len(encoded)} bytes): {exc}") from exc
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def load_image(path: str | Path) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB as rfcn_tf.images decodes it (Pillow here, TF-free):
    grayscale and alpha converted, 16-bit values scaled to 8 bits (Pillow's own conversion
    clips them to white), the EXIF orientation applied."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16-bit (I;16, I;16B) or 32-bit integer grayscale
            deep = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
            gray = (deep >> 8).astype(np.uint8)  # TF's uint16 -> uint8 conversion
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _as_image_batch(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] < 1 or array.shape[3] != 3:
        raise ValueError(f"image must be [H, W, 3] or [N, H, W, 3] RGB, got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB pixels, got dtype {array.dtype}")
    return array


# --------------------------------------------------------------------------------------------
# Transports


class _Client(abc.ABC):
    """What REST and gRPC share: one model (and optional version) on one server."""

    target: str

    num_classes: int | None = None  # C when known (labels): class ids above it are refused

    def __init__(self, model: str, *, version: int | None, timeout: float):
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
    def predict(
        self, inputs: Mapping[str, Any], *, signature_name: str = SIGNATURE_IMAGE
    ) -> dict[str, np.ndarray]:
        """Runs one signature. ``inputs`` maps input names to arrays (batch dimension included;
        bytes or an [N] object array of bytes for string inputs). Returns output name -> array
        with the batch dimension."""

    def detect(
        self, image: ImageInput, *, image_size: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """Detections for one image (the dict of ``detections_from_outputs``).

        Args:
          image: uint8 [H, W, 3] (or [1, H, W, 3]) RGB pixels -> ``serving_default``; or the
            bytes of an encoded image file -> ``serving_encoded``.
          image_size: (height, width) of the original image; read from the encoded image's
            header when None.
        """
        if (
            not isinstance(image, (bytes, bytearray))
            and np.asarray(image).ndim == 4
            and np.asarray(image).shape[0] != 1
        ):
            raise ValueError(
                f"detect takes one image; use detect_batch for a batch of "
                f"{np.asarray(image).shape[0]}"
            )
        sizes = None if image_size is None else [image_size]
        return self.detect_batch([image], image_sizes=sizes)[0]

    def detect_batch(
        self, images: Sequence[ImageInput], *, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[str, Any]]:
        """Detections for N images in ONE request (one dict per image, in order).

        Args:
          images: all uint8 [H, W, 3] arrays of ONE size (-> ``serving_default``, which takes
            one size per batch), or all encoded image files as bytes, of any sizes
            (-> ``serving_encoded``).
          image_sizes: (height, width) of each original image; read from the encoded images'
            headers when None.
        """
        images = list(images)
        if not images:
            raise ValueError("detect_batch needs at least one image")
        encoded = [isinstance(image, (bytes, bytearray)) for image in images]
        if any(encoded) and not all(encoded):
            raise ValueError(
                "a batch mixes encoded images (bytes) and pixel arrays; send one kind per request"
            )
        if all(encoded):
            data = [bytes(image) for image in images]
            sizes = (
                list(image_sizes)
                if image_sizes is not None
                else [image_size_of(item) for item in data]
            )
            outputs = self.predict(
                {INPUT_ENCODED: np.array(data, dtype=object)}, signature_name=SIGNATURE_ENCODED
            )
        else:
            arrays = [_as_image_batch(image) for image in images]
            shapes = sorted({a.shape[1:3] for a in arrays})
            if len(shapes) > 1:
                raise ValueError(
                    f"{SIGNATURE_IMAGE} takes one image size per batch; this batch "
                    f"has the sizes {[list(s) for s in shapes]} (send encoded "
                    "images, which may differ, or one size per batch)"
                )
            batch = np.concatenate(arrays)
            sizes = [tuple(batch.shape[1:3])] * batch.shape[0]
            outputs = self.predict({INPUT_IMAGE: batch}, signature_name=SIGNATURE_IMAGE)
        return detections_from_batch(outputs, sizes, num_classes=self.num_classes)

    def close(self) -> None:  # noqa: B027 (a transport with nothing to close keeps this)
        """Releases the transport's connection (nothing for the base class)."""

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

    def __init__(self, url: str, model: str, *, version: int | None = None, timeout: float = 60.0):
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

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        try:
            if method == "POST":
                response = self._session.post(
                    url,
                    data=json.dumps(body),
                    timeout=self.timeout,
                    headers={"Content-Type": "application/json"},
                )
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
            raise ServingError(
                f"answer is not a JSON object: {response.text[:200]!r}",
                status=response.status_code,
                target=url,
            )
        return payload

    def predict(
        self, inputs: Mapping[str, Any], *, signature_name: str = SIGNATURE_IMAGE
    ) -> dict[str, np.ndarray]:
        """Row format: item i of each input's batch becomes instance i; ``predictions`` (one
        dict of outputs per instance, without the batch dimension) are stacked back."""
        arrays = {
            name: np.asarray(value)
            if not isinstance(value, (bytes, bytearray))
            else np.array([bytes(value)], dtype=object)
            for name, value in inputs.items()
        }
        sizes = {name: (array.shape[0] if array.ndim else None) for name, array in arrays.items()}
        if None in sizes.values() or 0 in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError(
                f"every input needs the same batch dimension >= 1, got shapes "
                f"{ {name: array.shape for name, array in arrays.items()} }"
            )
        count = next(iter(sizes.values()))
        if len(arrays) == 1:
            (array,) = arrays.values()
            instances: list = [_json_value(array[i]) for i in range(count)]
        else:
            instances = [
                {name: _json_value(array[i]) for name, array in arrays.items()}
                for i in range(count)
            ]
        payload = self._call(
            "POST",
            f"{self.model_url}:predict",
            {"signature_name": signature_name, "instances": instances},
        )
        predictions = payload.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != count:
            raise ServingError(
                f"expected 'predictions' with {count} instance(s), got {str(payload)[:200]}",
                status=200,
                target=self.model_url,
            )
        if not all(isinstance(item, dict) for item in predictions):
            raise ServingError(
                f"expected named outputs in each prediction, got {str(predictions[0])[:200]}",
                status=200,
                target=self.model_url,
            )
        names = set(predictions[0])
        if any(set(item) != names for item in predictions):
            raise ServingError(
                "the predictions name different outputs", status=200, target=self.model_url
            )
        try:
            return {
                name: np.stack([np.asarray(item[name], dtype=np.float64) for item in predictions])
                for name in names
            }
        except (ValueError, TypeError) as exc:
            raise ServingError(
                f"the predictions are not numeric tensors of one shape: {exc}",
                status=200,
                target=self.model_url,
            ) from exc

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

    def __init__(
        self,
        target: str,
        model: str,
        *,
        version: int | None = None,
        timeout: float = 60.0,
        max_message_bytes: int = 64 << 20,
    ):
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
                "`tensorflow` distribution, which tensorflow-cpu satisfies in practice)"
            ) from exc
        self._grpc = grpc
        self._tf = tf
        self._predict_pb2 = predict_pb2
        self.target = target
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(
        self, inputs: Mapping[str, Any], *, signature_name: str = SIGNATURE_IMAGE
    ) -> dict[str, np.ndarray]:
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
            raise ServingError(
                exc.details() or str(exc), status=status, target=self.target
            ) from exc
        return {name: self._tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


def read_labels(path: str | Path) -> list[str]:
    """``labels.txt`` of an export (line i, counting from 1, names class id i) -> names."""
    return [
        line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
    ]
