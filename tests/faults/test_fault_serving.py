"""Serving faults through the client CLI and API against the loopback server (stand-in
SavedModels that return known detections): bad tensors and server errors reach the user as one
line with the server's message; NaN boxes and invalid class ids from a server are refused
(issue 12 item 7), never printed as detections."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from helpers.fake_savedmodel import write_fake_export
from helpers.serving_testing_server import LoopbackServer
from PIL import Image

from rfcn_tf.serving.client import main as client_main
from rfcn_tf.serving.tf_serving_client import RestClient, ServingError

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
    return client_main(
        [
            server["image"],
            "--url",
            server["url"],
            "--model",
            model,
            "--raw-pixels",
            "--labels",
            server["labels"],
            *extra,
        ]
    )


def test_good_answer_prints_the_detection(server, capfd):
    assert _client(server, "good") == 0
    out = capfd.readouterr().out
    assert "cell" in out and "0.9" in out


@pytest.mark.parametrize(
    "model,message",
    [
        ("nan_boxes", "non-finite detection_boxes"),
        ("negative_class", "detection_classes -1.0"),
        ("class_past_labels", "detection_classes 3.0"),
    ],
)
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
    code = client_main(
        [server["image"], "--url", f"http://127.0.0.1:{port}", "--raw-pixels", "--timeout", "5"]
    )
    err = capfd.readouterr().err
    assert code == 1 and f"127.0.0.1:{port}" in err and "unreachable" in err
    assert "Traceback" not in err


def _exif_jpeg(path, height, width, orientation):
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 4] = 250
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def test_client_decodes_16_bit_and_exif_images_like_the_model(server, tmp_path, capfd):
    """Issue 12 items 2-3 on the client side: --raw-pixels sends what rfcn_tf.images decodes
    (16-bit scaled, not white; EXIF applied), and boxes are scaled by the EXIF-applied size."""
    from rfcn_tf.images import read_image
    from rfcn_tf.serving.tf_serving_client import image_size_of, load_image

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((24, 32), 20000, np.uint16)).save(deep)
    rotated = tmp_path / "rotated.jpg"
    _exif_jpeg(rotated, 30, 50, 6)
    np.testing.assert_array_equal(load_image(deep), read_image(str(deep)))
    here, there = load_image(rotated), read_image(str(rotated))
    assert here.shape == there.shape == (50, 30, 3)  # turned as the model's decoder turns it
    assert np.abs(here.astype(int) - there).mean() < 1.0  # two JPEG decoders: round-off only
    assert load_image(deep)[0, 0].tolist() == [78, 78, 78]  # 20000 >> 8, not 255
    assert image_size_of(rotated.read_bytes()) == (50, 30)
    code = client_main(
        [str(rotated), "--url", server["url"], "--model", "good", "--raw-pixels", "--json"]
    )
    assert code == 0
    (box,) = [d["box_yxyx"] for d in json.loads(capfd.readouterr().out)["detections"]]
    np.testing.assert_allclose(box, np.array(GOOD["boxes"][0]) * [50, 30, 50, 30], atol=0.1)
