"""No traceback reaches a user of any CLI: each console tool runs (a real subprocess, as a user
runs it) on a failing input and must print one `error:` line naming the culprit as the last
line of stderr, exit 1, and show no "Traceback" (that needs --debug). The six processes run at
once to keep the wall time to about one TensorFlow start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
from fault_helpers import make_voc, set_args, small_voc, tiny_overrides
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _garbage_checkpoint(folder):
    """A checkpoint folder whose state file points at an index that is not a checkpoint."""
    folder.mkdir(parents=True)
    (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n'
                                       'all_model_checkpoint_paths: "ckpt-5"\n')
    (folder / "ckpt-5.index").write_bytes(b"not an sstable" * 10)
    (folder / "ckpt-5.data-00000-of-00001").write_bytes(b"\0" * 64)
    return folder / "ckpt-5"


def test_every_cli_fails_in_one_line_without_a_traceback(tmp_path):
    voc = small_voc(tmp_path / "voc")
    (voc / "Annotations" / "im2.xml").write_text("<annotation><object>")  # malformed
    unknown = make_voc(tmp_path / "voc_unknown", {"a": (32, 32, [("zebra", 1, 1, 9, 9)])},
                       {"train": ["a"], "val": ["a"]})
    prefix = _garbage_checkpoint(tmp_path / "run" / "checkpoints")
    image = tmp_path / "not_an_image.jpg"
    image.write_text("plain text\n")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    good = set_args(tiny_overrides(tmp_path / "voc_ok", tmp_path / "run"))
    small_voc(tmp_path / "voc_ok")
    commands = {
        # culprit named in the error line -> command
        "im2.xml": ["rfcn_tf.train", "--config", "shapes_tiny", "--no-progress",
                    *set_args(tiny_overrides(voc, tmp_path / "train_run"))],
        str(prefix): ["rfcn_tf.evaluate", "--config", "shapes_tiny", *good,
                      "--checkpoint", str(prefix), "--no-progress"],
        "no_such_model": ["rfcn_tf.predict", "--saved-model", str(tmp_path / "no_such_model"),
                          "--out", str(tmp_path / "pred"), str(image)],
        str(prefix) + " ": ["rfcn_tf.export", "--config", "shapes_tiny", *good,
                            "--checkpoint", str(prefix), "--out", str(tmp_path / "export")],
        "zebra": ["rfcn_tf.data.inspect", "--config", "shapes_tiny",
                  *set_args(tiny_overrides(unknown, tmp_path / "inspect_run")),
                  "--out", str(tmp_path / "grid.png")],
        f"127.0.0.1:{port}": ["rfcn_tf.serving.client", str(photo), "--url",
                              f"http://127.0.0.1:{port}", "--timeout", "5"],
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("RFCN_TRACEBACK", None)
    running = {culprit: subprocess.Popen([sys.executable, "-m", *argv], cwd=str(tmp_path),
                                         env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
               for culprit, argv in commands.items()}
    failures = []
    for culprit, proc in running.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        name = commands[culprit][0]
        if proc.returncode != 1 or "Traceback" in err or not last.startswith("error: ") \
                or culprit.strip() not in last:
            failures.append(f"{name}: exit {proc.returncode}, last line {last!r}\n{err[-1500:]}")
    assert not failures, "\n\n".join(failures)
