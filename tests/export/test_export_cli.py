"""``python -m rfcn_tf.export``: help, a checkpoint exported with its weights (SavedModel,
verification, the --onnx wiring), the one-line summary, and clear non-zero exits."""

from __future__ import annotations

import pytest
import tensorflow as tf
from helpers.export_helpers import (
    CLASS_NAMES,
    MAX_SIZE,
    MIN_SIZE,
    MODEL_OVERRIDES,
    assert_outputs_close,
    build_tiny_model,
    reference_outputs,
    synthetic_image,
)

from rfcn_tf.export.__main__ import _parser, main

SIZE_FLAGS = ["--set", f"data.scales=[{MIN_SIZE}]", "--set", f"data.max_size={MAX_SIZE}"]
MODEL_FLAGS = [arg for override in MODEL_OVERRIDES for arg in ("--set", override)]


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in _parser()._actions:
        assert action.help and len(action.help) > 10, action.option_strings
        for flag in action.option_strings:
            assert flag in text
    for flag in ("--checkpoint", "--out", "--version", "--tensorrt", "--onnx", "--set"):
        assert flag in text


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A training-run folder as rfcn_tf.train leaves it: checkpoints/ckpt-7 (model + counters)
    and classes.txt. Its weights (seed 3) differ from a fresh build's, so equal detections
    prove the weights were restored."""
    run = tmp_path_factory.mktemp("run")
    _, model = build_tiny_model(seed=3)
    checkpoint = tf.train.Checkpoint(
        model=model, step=tf.Variable(7, dtype=tf.int64), num_classes=tf.Variable(3, dtype=tf.int64)
    )
    manager = tf.train.CheckpointManager(checkpoint, str(run / "checkpoints"), max_to_keep=1)
    manager.save(checkpoint_number=7)
    (run / "classes.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    return run, model


def test_cli_exports_the_checkpoint(trained_run, tmp_path, capsys, monkeypatch):
    """A full run, verification in a fresh process included. --onnx is wired to the version
    just written (export_onnx with --onnx-opset into <out>_onnx/<version>/model.onnx, then
    verify_onnx); the conversion itself is tested in test_deploy_onnx.py, so here it is
    recorded."""
    from rfcn_tf.export import onnx as onnx_export

    calls = []

    def fake_export(saved_model_dir, *, output_path, opset, loaded):
        assert "serving_default" in loaded.signatures  # loaded once, shared with the check
        calls.append(("export", saved_model_dir, output_path, opset))
        return output_path

    def fake_verify(onnx_path, saved_model_dir, *, images, loaded):
        assert "serving_default" in loaded.signatures
        calls.append(("verify", onnx_path, saved_model_dir))
        return onnx_export.OnnxComparison(2.5e-7, 10, 1)

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    monkeypatch.setattr(onnx_export, "verify_onnx", fake_verify)
    run, model = trained_run
    out = tmp_path / "export" / "rfcn"
    code = main(
        [
            "--config",
            "shapes_tiny",
            *MODEL_FLAGS,
            *SIZE_FLAGS,
            "--checkpoint",
            str(run / "checkpoints"),
            "--out",
            str(out),
            "--onnx",
            "--onnx-opset",
            "18",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    onnx_file = tmp_path / "export" / "rfcn_onnx" / "1" / "model.onnx"
    assert calls == [("export", out / "1", onnx_file, 18), ("verify", onnx_file, out / "1")]
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1  # the one-line summary; progress lines go to stderr
    assert "[export " in captured.err and "fresh Python process" in captured.err
    summary = lines[0]
    assert summary.startswith(f"exported rfcn version 1 to {out / '1'}: 3 classes (from ")
    assert "classes.txt" in summary and "ckpt-7" in summary
    assert "verified (stock ops, every signature runs)" in summary
    assert f"ONNX at {onnx_file} (onnxruntime matches on " in summary
    assert "max |diff| 2.5e-07 over 10 detections, 1 of them kept another box" in summary

    assert (out / "1" / "assets" / "labels.txt").read_text().splitlines() == CLASS_NAMES
    # TF Serving's batching parameters, from the verification process's own timing.
    batching = (out / "batching_parameters.txt").read_text()
    assert "# measured" in batching and "ms at batch 1" in batching, batching
    assert "max_batch_size { value: 8 }" in batching and "batch_timeout_micros" in batching
    loaded = tf.saved_model.load(str(out / "1"))
    image = synthetic_image(240, 300, seed=9)
    got = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    assert_outputs_close(
        {k: v.numpy() for k, v in got.items()}, reference_outputs(model, image), atol=1e-4
    )

    # The same version again is refused, with the next free one named.
    code = main(
        [
            "--config",
            "shapes_tiny",
            *MODEL_FLAGS,
            *SIZE_FLAGS,
            "--no-verify",
            "--checkpoint",
            str(run / "checkpoints"),
            "--out",
            str(out),
            "--version",
            "1",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ExportError:")  # refused before any slow step
    assert "already exists" in err and "next free: 2" in err


@pytest.mark.parametrize(
    "args,match",
    [
        (["--checkpoint", "/nonexistent/ckpt-1"], "/nonexistent/ckpt-1"),
        (["--checkpoint", "x", "--set", "model.bakbone=small"], "did you mean 'model.backbone'"),
        (["--checkpoint", "x", "--config", "no_such_preset"], "unknown config 'no_such_preset'"),
    ],
)
def test_cli_failures_exit_1_with_the_culprit(args, match, capsys, tmp_path):
    assert main(args + ["--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err, err
    assert not (tmp_path / "m").exists()


def test_cli_checkpoint_of_another_class_count(trained_run, tmp_path, capsys):
    run, _ = trained_run
    code = main(
        [
            "--config",
            "shapes_tiny",
            *MODEL_FLAGS,
            "--set",
            "data.class_names=[a, b]",
            "--checkpoint",
            str(run / "checkpoints"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "ckpt-7 was trained for 3 classes" in err, err
    assert not (tmp_path / "m").exists()
