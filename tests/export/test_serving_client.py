"""The serving client against the loopback server: REST (row and column formats, b64) and gRPC
give the local detections; every server error reaches the caller as a ServingError with the
server's message; the server binds 127.0.0.1 only and stops."""

from __future__ import annotations

import base64
import json
import socket

import numpy as np
import pytest
import requests
import tensorflow as tf
from helpers.serving_testing_server import HTTP_STATUS, LoopbackServer

from rfcn_tf.serving.client import main as client_main
from rfcn_tf.serving.tf_serving_client import (
    GrpcClient,
    RestClient,
    ServingError,
    detections_from_batch,
    detections_from_outputs,
)


@pytest.fixture(scope="module")
def server(exported):
    with LoopbackServer({"rfcn": exported.parent}, lifetime_s=300) as running:
        yield running


@pytest.fixture(scope="module")
def local(loaded, jpeg_image):
    """The detections dict of in-process inference on the test image."""
    outputs = loaded.signatures["serving_default"](input_tensor=tf.constant(jpeg_image[None]))
    height, width = jpeg_image.shape[:2]
    return detections_from_outputs(outputs, image_height=height, image_width=width)


def assert_same_detections(got, want, atol=1e-6):
    assert set(got) == {"boxes", "boxes_normalized", "scores", "classes", "num_detections"}
    assert got["num_detections"] == want["num_detections"] > 0
    assert got["classes"].dtype == np.int32
    np.testing.assert_array_equal(got["classes"], want["classes"])
    for key in ("boxes", "boxes_normalized", "scores"):
        assert got[key].dtype == np.float32, key
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=0, err_msg=key)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------- detections


def test_detections_dict_format(local, jpeg_image):
    height, width = jpeg_image.shape[:2]
    n = local["num_detections"]
    assert local["boxes"].shape == (n, 4) and local["scores"].shape == (n,)
    assert np.all((local["classes"] >= 1) & (local["classes"] <= 3))
    scale = np.array([height, width, height, width], np.float32)
    np.testing.assert_allclose(local["boxes"], local["boxes_normalized"] * scale, rtol=1e-6)
    assert np.all(local["boxes"][:, 2] <= height) and np.all(local["boxes"][:, 3] <= width)


def test_detections_from_outputs_checks_its_input():
    good = {
        "detection_boxes": np.zeros((1, 3, 4)),
        "detection_scores": np.zeros((1, 3)),
        "detection_classes": np.zeros((1, 3)),
        "num_detections": np.array([4.0]),
    }
    with pytest.raises(ValueError, match=r"num_detections = 4 outside \[0, 3\]"):
        detections_from_outputs(good, image_height=10, image_width=10)
    with pytest.raises(ValueError, match=r"lack \['num_detections'\]"):
        detections_from_outputs(
            {k: v for k, v in good.items() if k != "num_detections"},
            image_height=10,
            image_width=10,
        )
    with pytest.raises(ValueError, match="image size must be positive"):
        detections_from_outputs(good, image_height=0, image_width=10)


def test_rest_pixels(server, loaded, jpeg_image):
    # A crop: raw pixels travel as JSON numbers (about 4 bytes each), slow for a full image.
    crop = np.ascontiguousarray(jpeg_image[100:260, 200:440])
    outputs = loaded.signatures["serving_default"](input_tensor=tf.constant(crop[None]))
    want = detections_from_outputs(outputs, image_height=160, image_width=240)
    with RestClient(server.rest_url, "rfcn") as client:
        assert_same_detections(client.detect(crop), want)


def test_rest_encoded_b64(server, local, jpeg_bytes):
    with RestClient(server.rest_url, "rfcn", version=1) as client:
        assert_same_detections(client.detect(jpeg_bytes), local)


def test_grpc_pixels_and_encoded(server, local, jpeg_image, jpeg_bytes):
    with GrpcClient(server.grpc_target, "rfcn") as client:
        assert_same_detections(client.detect(jpeg_image), local)
        assert_same_detections(client.detect(jpeg_bytes), local)
    with GrpcClient(server.grpc_target, "rfcn", version=1) as client:
        assert_same_detections(client.detect(jpeg_bytes), local)


def test_rest_column_format_and_single_value_instances(server, loaded, jpeg_bytes):
    """TF Serving's two JSON layouts, sent by hand: ``inputs`` -> ``outputs`` (batched), and
    ``instances`` of bare values -> ``predictions`` (one object per instance)."""
    url = f"{server.rest_url}/v1/models/rfcn:predict"
    b64 = {"b64": base64.b64encode(jpeg_bytes).decode()}
    local = loaded.signatures["serving_encoded"](
        encoded_image_string_tensor=tf.constant([jpeg_bytes])
    )
    columns = requests.post(
        url,
        json={
            "signature_name": "serving_encoded",
            "inputs": {"encoded_image_string_tensor": [b64]},
        },
        timeout=60,
    )
    assert columns.status_code == 200, columns.text
    outputs = columns.json()["outputs"]
    rows = requests.post(
        url, json={"signature_name": "serving_encoded", "instances": [b64]}, timeout=60
    )
    assert rows.status_code == 200, rows.text
    (prediction,) = rows.json()["predictions"]
    for key, value in local.items():
        np.testing.assert_array_equal(np.asarray(outputs[key], np.float32), value.numpy())
        np.testing.assert_array_equal(np.asarray(prediction[key], np.float32), value.numpy()[0])


def test_rest_model_status(server):
    status = RestClient(server.rest_url, "rfcn").model_status()
    assert status["model_version_status"][0]["version"] == "1"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


# ------------------------------------------------------------------------------ batches


@pytest.fixture(scope="module")
def crops(jpeg_image):
    """Two crops of one size and one of another, with their PNGs and in-process detections."""
    same = [
        np.ascontiguousarray(jpeg_image[y : y + 120, x : x + 160]) for y, x in ((0, 0), (90, 200))
    ]
    other = np.ascontiguousarray(jpeg_image[200:340, 300:400])
    return same, other


def _local(loaded, image):
    out = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    return detections_from_outputs(out, image_height=image.shape[0], image_width=image.shape[1])


def test_rest_and_grpc_batches_equal_single_images(server, loaded, crops):
    same, other = crops
    want = [_local(loaded, im) for im in same + [other]]
    pngs = [tf.io.encode_png(im).numpy() for im in same + [other]]
    with (
        RestClient(server.rest_url, "rfcn") as rest,
        GrpcClient(server.grpc_target, "rfcn") as grpc,
    ):
        for client in (rest, grpc):
            pixels = client.detect_batch(same)
            encoded = client.detect_batch([pngs[2], pngs[0], pngs[1]])  # mixed sizes
            assert len(pixels) == 2 and len(encoded) == 3
            for got, expected in zip(pixels + encoded, want[:2] + [want[2], want[0], want[1]]):
                if expected["num_detections"]:
                    assert_same_detections(got, expected, atol=1e-4)
            with pytest.raises(ValueError, match="one image size per batch"):
                client.detect_batch([same[0], other])


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"detection_boxes": [[float("nan"), 0.1, 0.5, 0.5]]}, "non-finite detection_boxes"),
        ({"detection_scores": [float("inf")]}, "non-finite detection_scores"),
        ({"detection_classes": [-1.0]}, r"detection_classes -1.0 .*integers in 1\.\.3"),
        ({"detection_classes": [7.0]}, r"integers in 1\.\.3"),
        ({"detection_classes": [1.5]}, "integers"),
        ({"num_detections": float("nan")}, "not a count"),
    ],
)
def test_client_rejects_invalid_server_answers(monkeypatch, bad, match):
    """A server answering NaN boxes or class ids outside 1..C gets a clear error, not printed
    detections (REST's JSON carries NaN and Infinity as TF Serving writes them)."""
    good = {
        "detection_boxes": [[0.1, 0.1, 0.5, 0.5]],
        "detection_scores": [0.9],
        "detection_classes": [2.0],
        "num_detections": 1.0,
    }
    good.update(bad)
    client = RestClient("http://127.0.0.1:1", "rfcn")
    client.num_classes = 3
    monkeypatch.setattr(
        client, "_call", lambda *args: json.loads(json.dumps({"predictions": [good]}))
    )
    with pytest.raises(ValueError, match=match):
        client.detect(np.zeros((8, 8, 3), np.uint8))


def test_detections_from_batch_splits_per_image():
    outputs = {
        "detection_boxes": np.tile([[[0, 0, 0.5, 0.5], [0, 0, 0, 0]]], (2, 1, 1)),
        "detection_scores": [[0.9, 0.0], [0.8, 0.7]],
        "detection_classes": [[1.0, 0.0], [2.0, 1.0]],
        "num_detections": [1.0, 2.0],
    }
    first, second = detections_from_batch(outputs, [(10, 20), (100, 200)])
    assert first["num_detections"] == 1 and second["num_detections"] == 2
    np.testing.assert_allclose(first["boxes"], [[0, 0, 5, 10]])
    np.testing.assert_allclose(second["boxes"][0], [0, 0, 50, 100])
    with pytest.raises(ValueError, match=r"must be \[3, M, 4\]"):
        detections_from_batch(outputs, [(1, 1)] * 3)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "model,version,status,match",
    [
        ("nope", None, 404, r"Servable not found for request: Latest\(nope\)"),
        ("rfcn", 9, 404, r"Servable not found for request: Specific\(rfcn, 9\)"),
    ],
)
def test_rest_unknown_model_or_version(server, jpeg_bytes, model, version, status, match):
    with pytest.raises(ServingError, match=match) as info:
        RestClient(server.rest_url, model, version=version).detect(jpeg_bytes)
    assert info.value.status == status


def test_rest_not_an_image(server):
    client = RestClient(server.rest_url, "rfcn")
    with pytest.raises(ServingError, match="is not a JPEG, PNG, GIF, BMP or WebP file") as info:
        client.detect(b"plain text, not an image", image_size=(10, 10))
    assert info.value.status == 400


def test_rest_wrong_rank_gets_tensorflows_message(server):
    client = RestClient(server.rest_url, "rfcn")
    with pytest.raises(
        ServingError, match=r"not compatible with expected shape \[\?,\?,\?,3\]"
    ) as info:
        client.predict({"input_tensor": np.zeros((1, 8, 3), np.uint8)})
    assert info.value.status == 400


@pytest.mark.parametrize(
    "body,match",
    [
        ("{not json", "JSON Parse error"),
        ('{"signature_name": "serving_default"}', "Missing 'inputs' or 'instances' key"),
        ('{"instances": [1], "inputs": [1]}', "only one of 'inputs' or 'instances'"),
        (
            '{"signature_name": "nope", "instances": [1]}',
            'Serving signature name: "nope" not found in signature def',
        ),
        ('{"instances": [[[[300, 0, 0]]]]}', r"values \[0, 300\] are out of range \[0, 255\]"),
        ('{"instances": [[[["a", "b", "c"]]]]}', "expects uint8 numbers"),
        ('{"instances": [[[[0, 0, 0]], [[0, 0]]]]}', "not a rectangular tensor|expects uint8"),
        ('{"instances": [{"wrong_name": 1}]}', r"has inputs \['wrong_name'\]"),
    ],
)
def test_rest_bad_requests_are_400_with_message(server, body, match):
    response = requests.post(f"{server.rest_url}/v1/models/rfcn:predict", data=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/json"
    payload = json.loads(response.text)
    assert list(payload) == ["error"]
    assert __import__("re").search(match, payload["error"]), payload["error"]


def test_rest_malformed_path_and_unimplemented_method(server):
    bad = requests.post(
        f"{server.rest_url}/v1/models/rfcn/versions/x:predict", data="{}", timeout=30
    )
    assert bad.status_code == 400 and "Malformed request" in bad.json()["error"]
    classify = requests.post(f"{server.rest_url}/v1/models/rfcn:classify", data="{}", timeout=30)
    assert classify.status_code == 501 and ":predict only" in classify.json()["error"]


def test_http_status_mapping_follows_tf_serving():
    assert HTTP_STATUS["INVALID_ARGUMENT"] == HTTP_STATUS["FAILED_PRECONDITION"] == 400
    assert HTTP_STATUS["NOT_FOUND"] == 404 and HTTP_STATUS["UNIMPLEMENTED"] == 501
    assert HTTP_STATUS["RESOURCE_EXHAUSTED"] == 429 and HTTP_STATUS["UNAVAILABLE"] == 503
    assert HTTP_STATUS["DEADLINE_EXCEEDED"] == 504 and HTTP_STATUS["INTERNAL"] == 500


def test_grpc_wrong_dtype_gets_tensorflows_message(server):
    client = GrpcClient(server.grpc_target, "rfcn")
    with pytest.raises(ServingError, match="uint8") as info:
        client.predict({"input_tensor": np.zeros((1, 8, 8, 3), np.float32)})
    assert info.value.status == "INVALID_ARGUMENT"
    client.close()


def test_grpc_errors(server, jpeg_bytes):
    with GrpcClient(server.grpc_target, "rfcn") as client:
        with pytest.raises(ServingError, match="is not a JPEG, PNG, GIF, BMP or WebP file") as info:
            client.detect(b"GIF? no", image_size=(4, 4))
        assert info.value.status == "INVALID_ARGUMENT"
        with pytest.raises(ServingError, match="not found in signature def") as info:
            client.predict(
                {"input_tensor": np.zeros((1, 8, 8, 3), np.uint8)}, signature_name="nope"
            )
        assert info.value.status == "INVALID_ARGUMENT"
        with pytest.raises(ServingError, match=r"missing \['input_tensor'\]") as info:
            client.predict({"image": np.zeros((1, 8, 8, 3), np.uint8)})
        assert info.value.status == "INVALID_ARGUMENT"
    with GrpcClient(server.grpc_target, "other", version=3) as client:
        with pytest.raises(ServingError, match=r"Specific\(other, 3\)") as info:
            client.detect(jpeg_bytes)
        assert info.value.status == "NOT_FOUND"


def test_unreachable_server():
    port = _free_port()
    with pytest.raises(ServingError, match="unreachable") as info:
        RestClient(f"http://127.0.0.1:{port}", "rfcn", timeout=5).model_status()
    assert info.value.status is None
    with GrpcClient(f"127.0.0.1:{port}", "rfcn", timeout=5) as client:
        with pytest.raises(ServingError) as info:
            client.predict({"input_tensor": np.zeros((1, 8, 8, 3), np.uint8)})
    assert info.value.status == "UNAVAILABLE"


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: RestClient("localhost:8501", "rfcn"), "must start with http"),
        (lambda: RestClient("http://x", "a/b"), "model name"),
        (lambda: GrpcClient("http://x:1", "rfcn"), "host:port"),
        (lambda: RestClient("http://x", "rfcn", timeout=0), "timeout must be positive"),
    ],
)
def test_client_argument_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_client_image_checks(server):
    client = RestClient(server.rest_url, "rfcn")
    with pytest.raises(ValueError, match="must be uint8"):
        client.detect(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        client.detect(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="not a readable image"):
        client.detect(b"not an image")  # the size comes from the header: read locally first


# ----------------------------------------------------------------------- server lifecycle


def test_server_binds_loopback_and_stops(exported):
    server = LoopbackServer({"m": exported.parent}, lifetime_s=60).start()
    assert server.rest_url.startswith("http://127.0.0.1:")
    assert server.grpc_target.startswith("127.0.0.1:")
    assert RestClient(server.rest_url, "m").model_status()["model_version_status"]
    server.stop()
    server.stop()  # idempotent
    assert not server.running
    with pytest.raises(ServingError, match="unreachable"):
        RestClient(server.rest_url, "m", timeout=5).model_status()


def test_server_watchdog_stops_it(exported):
    import time

    server = LoopbackServer({"m": exported.parent}, grpc=False, lifetime_s=0.5).start()
    deadline = time.monotonic() + 10
    while server.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.running


def test_server_rejects_a_folder_without_versions(tmp_path):
    with pytest.raises(FileNotFoundError, match="no numeric version folder"):
        LoopbackServer({"m": tmp_path})


# ---------------------------------------------------------------------------- command line


def test_client_cli_rest_and_grpc(server, exported, jpeg_bytes, local, tmp_path, capsys):
    image = tmp_path / "cells.jpg"
    image.write_bytes(jpeg_bytes)
    labels = exported / "assets" / "labels.txt"
    assert (
        client_main(
            [str(image), "--url", server.rest_url, "--model", "rfcn", "--labels", str(labels)]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == local["num_detections"] + 1
    first = out[0].split("\t")
    assert first[0] == str(image) and first[1] in ("circle", "square", "triangle")
    assert float(first[2]) == pytest.approx(local["scores"][0], abs=1e-3)
    assert out[-1].startswith(f"1 image(s), {local['num_detections']} detection(s)")

    assert (
        client_main(
            [
                str(image),
                "--grpc",
                server.grpc_target,
                "--model",
                "rfcn",
                "--raw-pixels",
                "--json",
                "--min-score",
                "0.3",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[0])
    assert all(d["score"] >= 0.3 for d in record["detections"])
    assert len(record["detections"]) == int(np.sum(local["scores"] >= 0.3))
    assert "gRPC" in captured.err


def test_client_cli_batch_size(server, loaded, crops, tmp_path, capsys):
    same, other = crops
    paths = []
    for index, image in enumerate(same + [other]):
        path = tmp_path / f"crop{index}.png"
        tf.io.write_file(str(path), tf.io.encode_png(image))
        paths.append(str(path))
    want = sum(_local(loaded, im)["num_detections"] for im in same + [other])
    assert client_main(paths + ["--url", server.rest_url, "--batch-size", "2", "--json"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["image"] for r in records] == paths
    assert sum(len(r["detections"]) for r in records) == want
    assert captured.err.strip().endswith("s") and "3 image(s)" in captured.err
    # Raw pixels of two sizes in one batch: a clear error naming the batch.
    assert (
        client_main(paths[1:] + ["--url", server.rest_url, "--batch-size", "2", "--raw-pixels"])
        == 1
    )
    err = capsys.readouterr().err
    assert "(batch of 2)" in err and "one image size per batch" in err
    assert client_main(paths + ["--url", server.rest_url, "--batch-size", "0"]) == 2


def test_client_cli_reports_server_errors(server, tmp_path, capsys):
    image = tmp_path / "x.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))
    assert client_main([str(image), "--url", server.rest_url, "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "404" in err and "Servable not found" in err
    assert client_main([str(tmp_path / "missing.jpg"), "--url", server.rest_url]) == 1
    assert "No such file" in capsys.readouterr().err
