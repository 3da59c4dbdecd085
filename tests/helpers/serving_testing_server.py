"""A loopback stand-in for ``tensorflow_model_server``, for tests of exports and clients.

``tensorflow_model_server`` cannot be installed here (not on PyPI, not in Debian), so tests
serve SavedModels with this module instead. It loads each model's latest version (TF Serving's
default version policy) with ``tf.saved_model.load`` and answers, on 127.0.0.1 only, on free
ports chosen by the OS:

- REST, following TF Serving's documented API (https://www.tensorflow.org/tfx/serving/api_rest):
  ``POST /v1/models/<name>[/versions/<v>]:predict`` with a JSON object holding
  ``signature_name`` (default ``serving_default``) and exactly one of ``instances`` (row
  format: a list with one element per batch item, each the value of the only input or an
  object of named inputs; answered as ``{"predictions": [...]}``, one element per item, an
  object of named outputs when there are several) or ``inputs`` (column format: a value or an
  object of named batched inputs; answered as ``{"outputs": ...}``). Binary strings travel as
  ``{"b64": "<base64>"}``. ``GET /v1/models/<name>[/versions/<v>]`` returns the version
  status. Failures answer ``{"error": "<message>"}`` with TF Serving's HTTP code for the status
  (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE -> 400; NOT_FOUND -> 404;
  RESOURCE_EXHAUSTED -> 429; UNIMPLEMENTED -> 501; UNAVAILABLE -> 503; DEADLINE_EXCEEDED -> 504;
  UNKNOWN, INTERNAL, DATA_LOSS -> 500; see tensorflow_serving/model_servers/http_server.cc).
- gRPC: ``tensorflow.serving.PredictionService/Predict`` (``tensorflow-serving-api``'s
  stubs); other RPCs answer UNIMPLEMENTED. Errors are gRPC statuses with the same codes.

JSON values are converted to the dtype the signature declares (as TF Serving does); a gRPC
``TensorProto`` keeps its own dtype, so a wrong dtype meets TensorFlow's own type check.

It is bounded: a thread pool of ``max_workers`` for gRPC, a request-body limit, and a
``lifetime_s`` watchdog that stops both servers even if a test forgets to. Use it as a context
manager::

    with LoopbackServer({"rfcn": "export/rfcn"}) as server:
        client = RestClient(server.rest_url, "rfcn")

It is a test fixture, not a production server: requests run as sent (no server-side
batching), no model reloading, no labels.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import http.server
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

# TF status code -> HTTP status (tensorflow_serving/model_servers/http_server.cc).
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# tf.errors.OpError.error_code (error_codes.proto numbers) -> status name.
_CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
DEFAULT_SIGNATURE = "serving_default"

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?", re.IGNORECASE)


class ServingStatus(Exception):
    """A failed request: ``code`` is a TF status name (``"INVALID_ARGUMENT"``), ``message`` the
    text the client sees."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Servable:
    """One loaded SavedModel version and its signatures' input specs."""

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = path
        self.loaded = tf.saved_model.load(str(path))
        self.signatures = dict(self.loaded.signatures)
        self.input_specs: dict[str, dict[str, tf.TensorSpec]] = {}
        for key, fn in self.signatures.items():
            _, kwargs = fn.structured_input_signature
            self.input_specs[key] = dict(kwargs)


def _latest_version(base: Path) -> tuple[int, Path]:
    versions = sorted(
        (int(p.name), p)
        for p in base.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if not versions:
        raise FileNotFoundError(f"no numeric version folder with a saved_model.pb under {base}")
    return versions[-1]


def _decode_b64(value: Any) -> Any:
    """Replaces every {"b64": s} in a JSON value by the bytes it encodes."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ServingStatus(
                    "INVALID_ARGUMENT", f"'b64' value is not valid base64: {exc}"
                ) from exc
        raise ServingStatus(
            "INVALID_ARGUMENT",
            f'an object inside a tensor value may only be {{"b64": ...}}, got keys {sorted(value)}',
        )
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _single_input(value: Any, specs: Mapping[str, tf.TensorSpec], rule: str) -> dict:
    """Unnamed input data: allowed only when the signature has exactly one input."""
    if len(specs) != 1:
        raise ServingStatus(
            "INVALID_ARGUMENT", f"the signature takes {len(specs)} inputs {sorted(specs)}: {rule}"
        )
    (key,) = specs
    return {key: _json_to_array(value, specs[key], key)}


def _json_to_array(value: Any, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """A JSON tensor value -> a NumPy array of the signature's dtype (TF Serving's rule)."""
    value = _decode_b64(value)
    dtype = spec.dtype
    if dtype == tf.string:
        array = np.array(value, dtype=object)
        flat = array.reshape(-1)
        for item in flat:
            if not isinstance(item, (bytes, str)):
                raise ServingStatus(
                    "INVALID_ARGUMENT",
                    f"input '{name}' is a string tensor; got the value "
                    f"{str(item)[:50]!r} of type {type(item).__name__}",
                )
        return np.array(
            [i.encode() if isinstance(i, str) else i for i in flat], dtype=object
        ).reshape(array.shape)
    try:
        array = np.array(value)
    except ValueError as exc:  # ragged nested lists
        raise ServingStatus(
            "INVALID_ARGUMENT", f"input '{name}' is not a rectangular tensor: {exc}"
        ) from exc
    if (
        array.dtype == object
        or array.dtype.kind in "US"
        or (array.dtype.kind == "b") != (dtype == tf.bool)
    ):
        raise ServingStatus(
            "INVALID_ARGUMENT",
            f"input '{name}' expects {dtype.name} numbers; got a value of "
            f"NumPy dtype {array.dtype} (ragged lists, strings or booleans)",
        )
    np_dtype = dtype.as_numpy_dtype
    if dtype.is_integer:
        if array.size and array.dtype.kind == "f" and not np.all(np.equal(np.mod(array, 1), 0)):
            raise ServingStatus(
                "INVALID_ARGUMENT", f"input '{name}' expects {dtype.name}; got non-integer numbers"
            )
        info = np.iinfo(np_dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ServingStatus(
                "INVALID_ARGUMENT",
                f"input '{name}' expects {dtype.name}; values "
                f"[{array.min()}, {array.max()}] are out of range "
                f"[{info.min}, {info.max}]",
            )
    return array.astype(np_dtype)


def _array_to_json(value: Any) -> Any:
    """An output tensor (or one batch item of it) -> JSON; bytes become {"b64": ...}."""
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind == "S":
        if array.ndim == 0:
            return _array_to_json(array.item())
        return [_array_to_json(item) for item in array]
    return array.tolist()


class ServingCore:
    """The model registry and the predict logic that REST and gRPC share."""

    def __init__(self, models: Mapping[str, str | Path]):
        if not models:
            raise ValueError("LoopbackServer needs at least one model: {name: base_path}")
        self.servables: dict[str, _Servable] = {}
        for name, base in models.items():
            base = Path(base)
            if not base.is_dir():
                raise FileNotFoundError(f"model base path for '{name}' is not a folder: {base}")
            version, path = _latest_version(base)
            self.servables[name] = _Servable(name, version, path)

    def servable(self, name: str, version: int | None) -> _Servable:
        servable = self.servables.get(name)
        if servable is None or (version is not None and version != servable.version):
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingStatus("NOT_FOUND", f"Servable not found for request: {request}")
        return servable

    def signature_inputs(self, servable: _Servable, signature: str) -> dict[str, tf.TensorSpec]:
        if signature not in servable.input_specs:
            raise ServingStatus(
                "INVALID_ARGUMENT",
                f'Serving signature name: "{signature}" not found in '
                f"signature def (available: {sorted(servable.input_specs)})",
            )
        return servable.input_specs[signature]

    def predict(
        self, name: str, version: int | None, signature: str, inputs: Mapping[str, Any]
    ) -> tuple[_Servable, dict[str, np.ndarray]]:
        """Runs ``signature`` of the model on ``inputs`` (name -> array or tensor)."""
        signature = signature or DEFAULT_SIGNATURE
        servable = self.servable(name, version)
        specs = self.signature_inputs(servable, signature)
        if set(inputs) != set(specs):
            raise ServingStatus(
                "INVALID_ARGUMENT",
                f"inputs do not match signature '{signature}': sent {sorted(inputs)}, the "
                f"signature takes {sorted(specs)} (missing {sorted(set(specs) - set(inputs))}, "
                f"extra {sorted(set(inputs) - set(specs))})",
            )
        try:
            tensors = {k: tf.constant(v) for k, v in inputs.items()}
            outputs = servable.signatures[signature](**tensors)
        except tf.errors.OpError as exc:
            raise ServingStatus(_CODE_NAMES.get(exc.error_code, "UNKNOWN"), exc.message) from exc
        except (TypeError, ValueError) as exc:  # the function's own argument checks
            raise ServingStatus("INVALID_ARGUMENT", str(exc)) from exc
        return servable, {k: v.numpy() for k, v in outputs.items()}

    # REST ----------------------------------------------------------------------------------

    def rest_predict(self, name: str, version: int | None, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ServingStatus("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from exc
        if not isinstance(request, dict):
            raise ServingStatus(
                "INVALID_ARGUMENT",
                "the request body must be a JSON object with 'instances' or "
                f"'inputs', got {type(request).__name__}",
            )
        has_rows, has_columns = "instances" in request, "inputs" in request
        if has_rows == has_columns:
            raise ServingStatus(
                "INVALID_ARGUMENT",
                "Missing 'inputs' or 'instances' key"
                if not has_rows
                else "expected only one of 'inputs' or 'instances' keys",
            )
        signature = request.get("signature_name") or DEFAULT_SIGNATURE
        if not isinstance(signature, str):
            raise ServingStatus(
                "INVALID_ARGUMENT", f"'signature_name' must be a string, got {signature!r}"
            )
        specs = self.signature_inputs(self.servable(name, version), signature)
        if has_rows:
            arrays = self._rows_to_arrays(request["instances"], specs)
        else:
            arrays = self._columns_to_arrays(request["inputs"], specs)
        _, outputs = self.predict(name, version, signature, arrays)
        if has_columns:
            if len(outputs) == 1:
                return {"outputs": _array_to_json(next(iter(outputs.values())))}
            return {"outputs": {k: _array_to_json(v) for k, v in outputs.items()}}
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
        batch = {s for s in sizes.values()}
        if len(batch) != 1 or None in batch:
            raise ServingStatus(
                "INVALID_ARGUMENT",
                f"row format needs every output batched alike; output batch "
                f"sizes are {sizes} (use the 'inputs' column format)",
            )
        (count,) = batch
        if len(outputs) == 1:
            (value,) = outputs.values()
            return {"predictions": [_array_to_json(value[i]) for i in range(count)]}
        return {
            "predictions": [
                {k: _array_to_json(v[i]) for k, v in outputs.items()} for i in range(count)
            ]
        }

    @staticmethod
    def _rows_to_arrays(instances: Any, specs: Mapping[str, tf.TensorSpec]) -> dict:
        if not isinstance(instances, list) or not instances:
            raise ServingStatus(
                "INVALID_ARGUMENT",
                "'instances' must be a non-empty list (one element per batch "
                f"item), got {str(instances)[:80]}",
            )
        named = [isinstance(i, dict) and set(i) != {"b64"} for i in instances]
        if any(named) and not all(named):
            raise ServingStatus(
                "INVALID_ARGUMENT", "'instances' mixes objects of named inputs with plain values"
            )
        if all(named):
            columns: dict[str, list] = {}
            for index, instance in enumerate(instances):
                if set(instance) != set(specs):
                    raise ServingStatus(
                        "INVALID_ARGUMENT",
                        f"instances[{index}] has inputs {sorted(instance)}, the signature "
                        f"takes {sorted(specs)}",
                    )
                for key, value in instance.items():
                    columns.setdefault(key, []).append(value)
            return {k: _json_to_array(v, specs[k], k) for k, v in columns.items()}
        return _single_input(instances, specs, "each instance must be an object naming them")

    @staticmethod
    def _columns_to_arrays(inputs: Any, specs: Mapping[str, tf.TensorSpec]) -> dict:
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            unknown = set(inputs) - set(specs)
            if unknown:
                raise ServingStatus(
                    "INVALID_ARGUMENT",
                    f"'inputs' names {sorted(unknown)}, not inputs of the "
                    f"signature ({sorted(specs)})",
                )
            return {k: _json_to_array(v, specs[k], k) for k, v in inputs.items()}
        return _single_input(inputs, specs, "'inputs' must be an object naming them")

    def rest_status(self, name: str | None, version: int | None) -> dict:
        if not name:
            raise ServingStatus("INVALID_ARGUMENT", "Missing model name in request.")
        servable = self.servable(name, version)
        return {
            "model_version_status": [
                {
                    "version": str(servable.version),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }


def _make_handler(core: ServingCore, max_body_bytes: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet: tests read errors from responses
            pass

        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: ServingStatus) -> None:
            self._reply(HTTP_STATUS.get(status.code, 500), {"error": status.message})

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > max_body_bytes:
                self.close_connection = True
                raise ServingStatus(
                    "RESOURCE_EXHAUSTED",
                    f"request body of {length} bytes exceeds the loopback "
                    f"server's limit of {max_body_bytes} bytes",
                )
            return self.rfile.read(length)

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            try:
                body = self._read_body()
                match = _PREDICT_PATH.fullmatch(path)
                if not match:
                    raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: POST {path}")
                name, version, method = match.groups()
                if method.lower() != "predict":
                    raise ServingStatus(
                        "UNIMPLEMENTED",
                        f"the loopback server implements :predict only, not :{method}",
                    )
                payload = core.rest_predict(name, None if version is None else int(version), body)
            except ServingStatus as status:
                return self._error(status)
            self._reply(200, payload)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            try:
                match = _STATUS_PATH.fullmatch(path)
                if not match:
                    raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: GET {path}")
                name, version = match.groups()
                payload = core.rest_status(name, None if version is None else int(version))
            except ServingStatus as status:
                return self._error(status)
            self._reply(200, payload)

    return Handler


class LoopbackServer:
    """Serves SavedModels over REST and gRPC on 127.0.0.1 (module docstring).

    Args:
      models: model name -> base path holding numeric version folders (TF Serving's layout,
        ``export/<model_name>/<version>/``); the latest version of each is loaded.
      rest, grpc: which APIs to start.
      max_workers: gRPC worker threads (REST uses one thread per connection).
      max_body_bytes: largest REST request body and gRPC message accepted.
      lifetime_s: the servers stop by themselves after this many seconds.

    Attributes (after ``start``): ``rest_url`` (``http://127.0.0.1:<port>``), ``grpc_target``
    (``127.0.0.1:<port>``), ``core`` (the ``ServingCore``).
    """

    def __init__(
        self,
        models: Mapping[str, str | Path],
        *,
        rest: bool = True,
        grpc: bool = True,
        max_workers: int = 4,
        max_body_bytes: int = 64 << 20,
        lifetime_s: float = 600.0,
    ):
        if not (rest or grpc):
            raise ValueError("LoopbackServer needs rest=True, grpc=True or both")
        self.core = ServingCore(models)
        self._want_rest, self._want_grpc = rest, grpc
        self._max_workers = max_workers
        self._max_body_bytes = max_body_bytes
        self._lifetime_s = lifetime_s
        self._http: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc_server = None
        self._watchdog: threading.Timer | None = None
        self._lock = threading.Lock()
        self.rest_url: str | None = None
        self.grpc_target: str | None = None

    def start(self) -> LoopbackServer:
        if self._want_rest:
            server = http.server.ThreadingHTTPServer(
                ("127.0.0.1", 0), _make_handler(self.core, self._max_body_bytes)
            )
            server.daemon_threads = True
            self._http = server
            self._http_thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="loopback-rest",
                daemon=True,
            )
            self._http_thread.start()
            self.rest_url = f"http://127.0.0.1:{server.server_address[1]}"
        if self._want_grpc:
            self._start_grpc()
        self._watchdog = threading.Timer(self._lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        core = self.core

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                spec = request.model_spec
                try:
                    if spec.WhichOneof("version_choice") == "version_label":
                        raise ServingStatus(
                            "UNIMPLEMENTED",
                            "version labels are not supported by the loopback "
                            "server; give a numeric version",
                        )
                    version = spec.version.value if spec.HasField("version") else None
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                    servable, outputs = core.predict(
                        spec.name, version, spec.signature_name, inputs
                    )
                except ServingStatus as status:
                    context.abort(grpc.StatusCode[status.code], status.message)
                except (TypeError, ValueError) as exc:  # an undecodable TensorProto
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
                return response

        options = [
            ("grpc.max_send_message_length", self._max_body_bytes),
            ("grpc.max_receive_message_length", self._max_body_bytes),
        ]
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="loopback-grpc"
            ),
            options=options,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        if port == 0:
            raise OSError("could not bind a gRPC port on 127.0.0.1")
        server.start()
        self._grpc_server = server
        self.grpc_target = f"127.0.0.1:{port}"

    def stop(self) -> None:
        """Stops both servers (idempotent; safe from the watchdog thread)."""
        with self._lock:
            if self._watchdog is not None and self._watchdog is not threading.current_thread():
                self._watchdog.cancel()
            self._watchdog = None
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
                self._http = None
            if self._http_thread is not None:
                self._http_thread.join(timeout=5)
                self._http_thread = None
            if self._grpc_server is not None:
                self._grpc_server.stop(grace=1.0).wait(timeout=5)
                self._grpc_server = None

    @property
    def running(self) -> bool:
        return self._http is not None or self._grpc_server is not None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
