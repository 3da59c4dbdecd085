"""No traceback reaches a user of any CLI: each tool (train, evaluate, predict, export,
data.inspect, serving.client) runs on a failing input and must exit 1 with one `error:` line
naming the culprit as the last line of stderr, and no "Traceback" (that needs --debug).

The tools run in process through their `main(argv)` (what the console scripts call), so one
TensorFlow start serves them all; train also runs as a real subprocess, to check the exit
status and that nothing is printed after the error when the interpreter exits."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from fault_helpers import make_voc, set_args, small_voc, tiny_overrides
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    bad_xml = small_voc(root / "voc_bad_xml")
    (bad_xml / "Annotations" / "im2.xml").write_text("<annotation><object>")  # malformed
    unknown = make_voc(
        root / "voc_unknown",
        {"a": (32, 32, [("zebra", 1, 1, 9, 9)])},
        {"train": ["a"], "val": ["a"]},
    )
    good = small_voc(root / "voc")
    folder = root / "run" / "checkpoints"  # a state file pointing at a non-checkpoint
    folder.mkdir(parents=True)
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckpt-5"\n'
    )
    (folder / "ckpt-5.index").write_bytes(b"not an sstable" * 10)
    (folder / "ckpt-5.data-00000-of-00001").write_bytes(b"\0" * 64)
    photo = root / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {
        "root": root,
        "bad_xml": bad_xml,
        "unknown": unknown,
        "good": good,
        "prefix": str(folder / "ckpt-5"),
        "photo": str(photo),
        "port": port,
    }


def _cases(i):
    root, prefix = i["root"], i["prefix"]
    good = set_args(tiny_overrides(i["good"], root / "run"))
    return {
        # tool: (module, argv, culprit named in the error line)
        "train": (
            "rfcn_tf.train",
            [
                "--config",
                "shapes_tiny",
                "--no-progress",
                *set_args(tiny_overrides(i["bad_xml"], root / "train_run")),
            ],
            "im2.xml",
        ),
        "evaluate": (
            "rfcn_tf.evaluate",
            ["--config", "shapes_tiny", *good, "--checkpoint", prefix, "--no-progress"],
            prefix,
        ),
        "predict": (
            "rfcn_tf.predict",
            ["--saved-model", str(root / "no_such_model"), "--out", str(root / "pred"), i["photo"]],
            "no_such_model",
        ),
        "export": (
            "rfcn_tf.export.__main__",
            [
                "--config",
                "shapes_tiny",
                *good,
                "--checkpoint",
                prefix,
                "--out",
                str(root / "export"),
            ],
            prefix,
        ),
        "data.inspect": (
            "rfcn_tf.data.inspect",
            [
                "--config",
                "shapes_tiny",
                *set_args(tiny_overrides(i["unknown"], root / "inspect_run")),
                "--out",
                str(root / "grid.png"),
            ],
            "zebra",
        ),
        "serving.client": (
            "rfcn_tf.serving.client",
            [i["photo"], "--url", f"http://127.0.0.1:{i['port']}", "--timeout", "5"],
            f"127.0.0.1:{i['port']}",
        ),
    }


def _check(code, err, culprit):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    assert code == 1, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert last.startswith("error: ") and culprit in last, err[-2000:]


@pytest.mark.parametrize(
    "tool", ["train", "evaluate", "predict", "export", "data.inspect", "serving.client"]
)
def test_cli_fails_in_one_line_without_a_traceback(inputs, capfd, monkeypatch, tool):
    monkeypatch.delenv("RFCN_TRACEBACK", raising=False)
    module, argv, culprit = _cases(inputs)[tool]
    code = importlib.import_module(module).main(argv)
    _check(code, capfd.readouterr().err, culprit)


def test_train_subprocess_exits_1_with_the_error_last(inputs):
    _, argv, culprit = _cases(inputs)["train"]
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("RFCN_TRACEBACK", None)
    done = subprocess.run(
        [sys.executable, "-m", "rfcn_tf.train", *argv],
        env=env,
        cwd=str(inputs["root"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(done.returncode, done.stderr, culprit)
