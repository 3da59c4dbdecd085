"""Serving faults through the client CLI and API against the loopback server (stand-in
SavedModels that return known detections): bad tensors and server errors reach the user as one
line with the server's message; NaN boxes and invalid class ids from a server are refused
(issue 12 item 7), never printed as detections."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from fake_savedmodel import write_fake_export
from PIL import Image
from serving_testing_server import LoopbackServer

from rfcn_tf.serving.client import RestClient, ServingError
from rfcn_tf.serving.client import main as client_main

NAMES = ["cell", "dot"]
GOOD = dict(boxes=[[0.1, 0.1, 0.5, 0.6]], scores=[0.9], classes=[1.0])
ANSWERS = {
    "good": GOOD,
    "nan_boxes": dict(GOOD, boxes=[[np.nan, 0.1, 0.5, 0.6]]),
    "negative_class": dict(GOOD, classes=[-1.0]),
    "class_past_labels": dict(GOOD, classes=[3.0]),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    models = {}
    for name, answer in ANSWERS.items():
        write_fake_export(str(root / name / "1"), NAMES, **answer)
        models[name] = root / name
    labels = root / "labels.txt"
    labels.write_text("".join(f"{n}\n" for n in NAMES))
    image = root / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(image)
    with LoopbackServer(models, grpc=False, lifetime_s=300) as running:
        yield {"url": running.rest_url, "labels": str(labels), "image": str(image)}


def _client(server, model, *extra):
    return client_main([server["image"], "--url", server["url"], "--model", model,
                        "--raw-pixels", "--labels", server["labels"], *extra])


def test_good_answer_prints_the_detection(server, capfd):
    assert _client(server, "good") == 0
    out = capfd.readouterr().out
    assert "cell" in out and "0.9" in out


@pytest.mark.parametrize("model,message", [
    ("nan_boxes", "non-finite detection_boxes"),
    ("negative_class", "detection_classes -1.0"),
    ("class_past_labels", "detection_classes 3.0"),
])
def test_invalid_detections_are_refused(server, capfd, model, message):
    code = _client(server, model)
    captured = capfd.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and server["image"] in lines[0] and message in lines[0], captured.err
    assert "nan" not in captured.out.lower() and "-1" not in captured.out


def test_unknown_model_and_bad_tensors_carry_the_server_message(server, capfd):
    code = _client(server, "no_such_model")
    err = capfd.readouterr().err
    assert code == 1 and "no_such_model" in err and "404" in err and "Traceback" not in err
    client = RestClient(server["url"], "good", version=None, timeout=30)
    with pytest.raises(ServingError) as bad_dtype:
        client.predict({"input_tensor": np.zeros((1, 8, 8, 3), np.float32) + 0.5})
    assert bad_dtype.value.status == 400 and bad_dtype.value.server_message


def test_server_down_names_the_url(server, capfd):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = client_main([server["image"], "--url", f"http://127.0.0.1:{port}", "--raw-pixels",
                        "--timeout", "5"])
    err = capfd.readouterr().err
    assert code == 1 and f"127.0.0.1:{port}" in err and "unreachable" in err
    assert "Traceback" not in err
