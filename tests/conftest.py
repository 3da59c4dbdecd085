"""Root of the test suite.

pytest puts this folder (tests/, which has no __init__.py) on sys.path for its conftest, so every
test imports the shared helpers as ``helpers.<module>`` (tests/helpers/) without path edits. The
same folder goes on PYTHONPATH here, so Python subprocesses that tests start (workers, scripts
run with ``-c``) import them too.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p
)


CUDA_COMPILE_TESTS = ("tests/ops/test_cuda_compile.py", "tests/ops/test_deform_cuda_compile.py")


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup`` (the Makefile's ``make test``): each test
    file runs on one worker (its module fixtures are built once), and all of tests/export/ on
    one worker, since its files share the session-scoped export of the tiny model
    (tests/export/conftest.py), the most expensive fixture of the suite; likewise the two CUDA
    compile test files, which share one nvcc object."""
    import pytest

    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = "tests/export" if path.startswith("tests/export/") else path
        if path in CUDA_COMPILE_TESTS:  # they share one nvcc object (tests/ops/conftest.py)
            group = "cuda-compile"
        item.add_marker(pytest.mark.xdist_group(name=group))
