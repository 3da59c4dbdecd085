"""The package's public surface: `import rfcn_tf` is light, names load lazily, the op has its
documented path, the console script dispatches to the tools."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_import_rfcn_tf_needs_no_tensorflow():
    proc = _python(
        "import sys, rfcn_tf\n"
        "print(rfcn_tf.__version__, 'tensorflow' in sys.modules)\n"
        "print(sorted(n for n in rfcn_tf.__all__))"
    )
    assert proc.returncode == 0, proc.stderr
    version, tf_loaded = proc.stdout.splitlines()[0].split()
    assert version.count(".") == 2 and tf_loaded == "False"
    for name in ("load", "Detector", "Detections", "RfcnError", "__version__"):
        assert name in proc.stdout


def test_public_names_resolve():
    import rfcn_tf
    from rfcn_tf.errors import InputError, RfcnError
    from rfcn_tf.inference.detector import Detections, Detector, load

    assert rfcn_tf.load is load and rfcn_tf.Detector is Detector
    assert rfcn_tf.Detections is Detections and rfcn_tf.RfcnError is RfcnError
    assert issubclass(InputError, rfcn_tf.RfcnError)


def test_ps_roi_pool_has_its_documented_path():
    from rfcn_tf.ops import ps_roi_pool
    from rfcn_tf.ops.psroi_pool import ps_roi_pool as implementation

    assert ps_roi_pool is implementation


def test_console_script_dispatches_and_reports_unknown_commands():
    proc = _python("import sys; from rfcn_tf.cli import main; sys.exit(main(['--help']))")
    assert proc.returncode == 0
    for command in ("train", "evaluate", "predict", "export", "inspect", "client"):
        assert command in proc.stdout
    proc = _python("import sys; from rfcn_tf.cli import main; sys.exit(main(['fly']))")
    assert proc.returncode == 2 and "unknown command 'fly'" in proc.stderr
    proc = _python(
        "import sys; from rfcn_tf.cli import main; sys.exit(main(['evaluate', '--help']))"
    )
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout
