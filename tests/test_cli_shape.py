"""The CLIs are thin shells: no library classes, no CLI importing another, < 150 lines each;
`--help` fast without TensorFlow; every error one line (no traceback without --debug)."""

import ast
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# python -m module -> its file
CLIS = {
    "rfcn_tf.train": "rfcn_tf/train.py",
    "rfcn_tf.evaluate": "rfcn_tf/evaluate.py",
    "rfcn_tf.predict": "rfcn_tf/predict.py",
    "rfcn_tf.export": "rfcn_tf/export/__main__.py",
    "rfcn_tf.data.inspect": "rfcn_tf/data/inspect.py",
    "rfcn_tf.serving.client": "rfcn_tf/serving/client.py",
}
MAX_LINES = 150


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RFCN_TRACEBACK", None)
    return env


def _tree(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _is_exception(node: ast.ClassDef) -> bool:
    names = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
    return any(n.endswith(("Error", "Exception", "Warning")) for n in names)


def _imported(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("module", sorted(CLIS))
def test_cli_is_thin(module):
    path = CLIS[module]
    tree = _tree(path)
    classes = [
        n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and not _is_exception(n)
    ]
    assert not classes, f"{path} defines library classes {classes}: move them to the library"
    others = {m for m in CLIS if m != module} | {"rfcn_tf.export.__main__", "rfcn_tf.cli"}
    others.discard(module)
    crossing = sorted(_imported(tree) & others)
    assert not crossing, f"{path} imports the CLI(s) {crossing}"
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = len(f.read().splitlines())
    assert lines < MAX_LINES, f"{path} has {lines} lines (a thin CLI has < {MAX_LINES})"


def test_the_shape_check_can_fail():
    tree = ast.parse(
        "import rfcn_tf.train\nclass Helper:\n    pass\nclass BadInput(ValueError):\n    pass\n"
    )
    assert [
        n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and not _is_exception(n)
    ] == ["Helper"]
    assert "rfcn_tf.train" in _imported(tree)


@pytest.mark.parametrize(
    "command", [["rfcn_tf.cli"]] + [[m] for m in sorted(CLIS)] + [["rfcn_tf.cli", "predict"]]
)
def test_help_is_fast_and_imports_no_tensorflow(command):
    module, extra = command[0], command[1:]
    code = (
        f"import sys, runpy; sys.argv = [{module!r}] + {extra!r} + ['--help']\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('TF' if 'tensorflow' in sys.modules else 'noTF', file=sys.stderr)\n"
        "sys.exit(code)"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "noTF", proc.stderr[-2000:]
    assert elapsed < 5.0  # < 1 s on an idle machine; generous for a loaded CI


@pytest.mark.parametrize(
    "args,culprit,debug",
    [
        (["rfcn_tf.train", "--set", "train.steps=-3"], "train.steps", True),
        (["rfcn_tf.evaluate", "--checkpoint", "/nonexistent/run"], "/nonexistent/run", True),
        (
            [
                "rfcn_tf.predict",
                "/nonexistent/a.jpg",
                "--saved-model",
                "/nonexistent/m",
                "--out",
                "o",
            ],
            "/nonexistent",
            True,
        ),
        (
            ["rfcn_tf.export", "--checkpoint", "/nonexistent/run", "--out", "o"],
            "/nonexistent/run",
            False,
        ),
        (["rfcn_tf.data.inspect", "--config", "/nonexistent.yaml"], "/nonexistent.yaml", False),
        (
            [
                "rfcn_tf.serving.client",
                "--model",
                "rfcn",
                "--url",
                "http://127.0.0.1:9",
                "/nonexistent/a.jpg",
            ],
            "/nonexistent/a.jpg",
            False,
        ),
    ],
)
def test_an_error_is_one_line_and_debug_shows_the_traceback(
    args, culprit, debug, tmp_path, capfd, monkeypatch
):
    """The real CLI (a subprocess): exit status 1 and one `error:` line naming the culprit,
    said before TensorFlow is imported (a mistyped path or value fails at once). `--debug` runs
    the tool's `main(argv)` in this process (run_cli, the same code the subprocess runs)."""
    module, extra = args[0], args[1:]
    code = (
        f"import sys, runpy; sys.argv = [{module!r}] + {extra!r}\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('TF' if 'tensorflow' in sys.modules else 'noTF')\n"
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and culprit in last, last
    assert proc.stdout.strip().splitlines()[-1] == "noTF", "TensorFlow was imported first"
    if debug:  # the tools on cli_args.run_cli
        import importlib
        import logging

        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("RFCN_TRACEBACK", raising=False)
        loggers = [logging.getLogger(name) for name in ("rfcn_tf", "tensorflow")]
        saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
        try:
            capfd.readouterr()
            code = importlib.import_module(args[0]).main([*args[1:], "--debug"])
            err = capfd.readouterr().err
        finally:  # the tool's logging setup and its quieting of TensorFlow's logger
            for lg, (handlers, level, propagate) in zip(loggers, saved):
                lg.handlers[:], lg.propagate = handlers, propagate
                lg.setLevel(level)
        assert code == 1 and "Traceback" in err, err[-2000:]
