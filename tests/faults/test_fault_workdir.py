"""Issue 12 item 6: a work dir holds a lock while a run writes to it. A second run refuses,
naming the other process, and changes nothing; a stale lock (dead pid, this host) is taken over
with a warning. Through the train CLI in process (it stops before building a model) and the
run folder's public lock."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

from fault_helpers import set_args, small_voc, snapshot, tiny_overrides

from rfcn_tf import train as train_cli


def _lock(work_dir, pid):
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / ".lock").write_text(
        json.dumps(
            {
                "pid": pid,
                "host": socket.gethostname(),
                "started": "2026-01-01 00:00:00",
                "command": "rfcn-tf train (the other run)",
            }
        )
    )


def test_second_run_refuses_naming_the_other_process(tmp_path, capfd):
    voc = small_voc(tmp_path / "voc")
    work_dir = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock(work_dir, other.pid)
        (work_dir / "checkpoints").mkdir()
        (work_dir / "checkpoints" / "ckpt-7.index").write_bytes(b"the other run's")
        before = snapshot(work_dir)
        code = train_cli.main(
            ["--config", "shapes_tiny", "--no-progress", *set_args(tiny_overrides(voc, work_dir))]
        )
        err = capfd.readouterr().err
    finally:
        other.kill()
        other.wait()
    assert code == 1
    assert f"work dir {work_dir} is in use by process {other.pid} on {socket.gethostname()}" in err
    assert "Traceback" not in err
    assert snapshot(work_dir) == before  # the other run's files untouched


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    from rfcn_tf.run_dir import WorkDirLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    work_dir = tmp_path / "run"
    _lock(work_dir, dead.pid)
    with caplog.at_level(logging.WARNING):
        with WorkDirLock(str(work_dir)) as lock:
            assert lock.read()["pid"] == os.getpid()
    assert f"taking over the stale lock of process {dead.pid}" in caplog.text
    assert not (work_dir / ".lock").exists()  # released at the end
