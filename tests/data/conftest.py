"""Fixtures for the data tests (helpers in tests/helpers/data_fixtures.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers.data_fixtures import make_voc


@pytest.fixture
def voc_root(tmp_path) -> Path:
    return make_voc(tmp_path / "voc")


@pytest.fixture
def data_warnings(caplog):
    """Captures the rfcn_tf.data logger's warnings; call it to get their messages."""
    caplog.set_level(logging.WARNING, logger="rfcn_tf.data")

    def messages():
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "rfcn_tf.data" and r.levelno >= logging.WARNING
        ]

    return messages
