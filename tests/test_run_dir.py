"""The run folder module (rfcn_tf/run_dir.py): files, checkpoint choice, the work-dir lock."""

import json
import os
import socket
import subprocess
import sys

import pytest

from rfcn_tf import run_dir
from rfcn_tf.errors import CheckpointError, RunLockedError


def _fake_checkpoint(folder, step):
    """A 'checkpoint' state file and an index naming ckpt-<step> (enough for latest lookup)."""
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, f"ckpt-{step}")
    open(prefix + ".index", "wb").close()
    open(prefix + ".data-00000-of-00001", "wb").close()
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write(
            f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n'
        )
    return prefix


def test_find_checkpoint_prefers_best_in_a_run_folder(tmp_path):
    work = str(tmp_path / "run")
    latest = _fake_checkpoint(os.path.join(work, "checkpoints"), 300)
    assert run_dir.find_checkpoint(work) == latest
    best = _fake_checkpoint(os.path.join(work, "checkpoints", "best"), 200)
    assert run_dir.find_checkpoint(work) == best
    assert run_dir.find_checkpoint(work, which="latest") == latest
    assert run_dir.find_checkpoint(os.path.join(work, "checkpoints")) == best
    assert run_dir.find_checkpoint(os.path.join(work, "checkpoints"), which="latest") == latest
    assert run_dir.find_checkpoint(latest) == latest
    with pytest.raises(CheckpointError, match="nowhere"):
        run_dir.find_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        run_dir.find_checkpoint(str(tmp_path))


def test_run_files_are_found_from_any_path_in_the_run(tmp_path):
    from rfcn_tf.config import load_config

    work = str(tmp_path / "run")
    cfg = load_config("shapes_tiny")
    path = run_dir.write_run_files(work, cfg, class_names=["a", "b"])
    prefix = _fake_checkpoint(os.path.join(work, "checkpoints", "best"), 5)
    assert run_dir.find_run_file(prefix, run_dir.RUN_CONFIG_NAME) == path
    assert run_dir.read_class_names(prefix) == ["a", "b"]
    assert run_dir.find_run_dir(os.path.join(work, "checkpoints")) == work
    loaded, source = run_dir.resolve_config(None, ["train.steps=7"], checkpoint=prefix)
    assert source == path and loaded.train.steps == 7
    assert run_dir.class_names_for(loaded, prefix)[0] == ["a", "b"]


def test_second_run_refuses_while_the_first_holds_the_lock(tmp_path):
    work = str(tmp_path / "run")
    # another live process on this host holds the lock
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(work)
        with open(os.path.join(work, run_dir.LOCK_NAME), "w") as f:
            json.dump(
                {
                    "pid": holder.pid,
                    "host": socket.gethostname(),
                    "started": "now",
                    "command": "rfcn-tf train",
                },
                f,
            )
        with pytest.raises(RunLockedError, match=f"process {holder.pid} on"):
            run_dir.WorkDirLock(work).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock is stale and taken over with a warning
    lock = run_dir.WorkDirLock(work)
    with lock:
        assert lock.read()["pid"] == os.getpid()
        with pytest.raises(RunLockedError):  # a lock of another live host counts as live
            other = run_dir.WorkDirLock(work)
            with open(lock.path, "w") as f:
                json.dump({"pid": 1, "host": "other-host", "started": "x"}, f)
            other.acquire()
        with open(lock.path, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    assert not os.path.exists(lock.path)  # released
    with run_dir.WorkDirLock(work, enabled=False):  # non-chief workers take no lock
        assert not os.path.exists(lock.path)


def test_stale_lock_warns(tmp_path, caplog):
    work = str(tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(work)
    with open(os.path.join(work, run_dir.LOCK_NAME), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}, f)
    with caplog.at_level("WARNING", logger="rfcn_tf.run_dir"), run_dir.WorkDirLock(work):
        pass
    assert any(f"stale lock of process {dead.pid}" in r.getMessage() for r in caplog.records)


def test_no_silent_dataset_fallback():
    from rfcn_tf.config import load_config
    from rfcn_tf.data.pipeline import build_source
    from rfcn_tf.data.sources import voc_xml
    from rfcn_tf.errors import RfcnError

    cfg = load_config("shapes_tiny", ["data.source=voc"])  # a VOC config without its folder
    with pytest.raises(
        Exception, match="data.voc_root is not set.*--set data.voc_root=PATH"
    ) as info:
        build_source(cfg.data, split="train")
    assert isinstance(info.value, (RfcnError, ValueError))
    # only the bccd preset names the BCCD folder
    assert load_config("bccd").data.voc_root == voc_xml.BCCD_ROOT
    try:
        assert voc_xml.resolve_voc_root(voc_xml.BCCD_ROOT) == voc_xml.default_voc_root()
    except ValueError as exc:  # a checkout without the BCCD folder: the message says where
        assert "VOC folder not found" in str(exc) and voc_xml.BCCD_ROOT in str(exc)
