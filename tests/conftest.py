"""Root of the test suite.

pytest puts this folder (tests/, which has no __init__.py) on sys.path for its conftest, so every
test imports the shared helpers as ``helpers.<module>`` (tests/helpers/) without path edits. The
same folder goes on PYTHONPATH here, so Python subprocesses that tests start (workers, scripts
run with ``-c``) import them too.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p
)


CUDA_COMPILE_TESTS = ("tests/ops/test_cuda_compile.py", "tests/ops/test_deform_cuda_compile.py")


def worker_group(nodeid: str) -> str:
    """The unit of work one pytest-xdist worker runs whole (``make test``: ``--dist loadscope``
    with this split): a test file, so its module fixtures are built once; all of tests/export/,
    whose files share the session-scoped export of the tiny model (tests/export/conftest.py);
    and the two CUDA compile test files, which share one nvcc object (tests/ops/conftest.py)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/export/"):
        return "tests/export"
    if path in CUDA_COMPILE_TESTS:
        return "cuda-compile"
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` over ``worker_group`` (xdist's own scopes are modules and classes).

    Groups are handed out largest (most tests) first, a whole group per worker. (xdist 3.8's
    ``loadgroup`` does not group under pytest 9: it renames ``item._nodeid``, which pytest 9
    no longer reads, so every test was scheduled alone and fixtures were built on both
    workers.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return GroupScheduling(config, log)
