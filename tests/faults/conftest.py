"""Fixtures of the fault suite: small VOC folders and a stand-in SavedModel, all under tmp_path.

The fault suite feeds each CLI and public API the bad input a careless or unlucky user would
and asserts the exit code, that the message names the culprit, and that nothing was lost (the
last good checkpoint restores, input files are untouched). Everything here is tiny so the whole
folder runs in about a minute on two cores.
"""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The shared test helpers: fake_savedmodel.py one folder up, the engine's stand-in model
# (engine_standin.py: a tiny detector that trains in milliseconds) in tests/engine.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _folder in (_TESTS, os.path.join(_TESTS, "engine")):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    """Runs the test inside tmp_path (CLIs that write relative paths write there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
