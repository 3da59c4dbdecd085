"""Fixtures of the fault suite: small VOC folders and a stand-in SavedModel, all under tmp_path.

The fault suite feeds each CLI and public API the bad input a careless or unlucky user would
and asserts the exit code, that the message names the culprit, and that nothing was lost (the
last good checkpoint restores, input files are untouched). Everything here is tiny so the whole
folder runs in about a minute on two cores.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    """Runs the test inside tmp_path (CLIs that write relative paths write there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
