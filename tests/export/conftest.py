"""Session fixtures of the export tests: one export of the tiny real model (shared by the
SavedModel, serving and ONNX tests) and one of the known-answer stand-in."""

from __future__ import annotations

import pytest
from helpers.export_helpers import (
    CLASS_NAMES,
    MAX_SIZE,
    MIN_SIZE,
    StandInDetector,
    build_tiny_model,
    decode,
    sample_jpeg,
)


@pytest.fixture(scope="session")
def tiny_model():
    """(config, RFCN) with spread-out random weights (export_helpers.build_tiny_model)."""
    return build_tiny_model()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_model):
    """The tiny model exported (unverified: the fresh-process check has its own test) as
    <tmp>/export/rfcn/1. Returns the version folder."""
    from rfcn_tf.export import export_saved_model

    out = tmp_path_factory.mktemp("export")
    return export_saved_model(
        tiny_model[1],
        class_names=CLASS_NAMES,
        out_dir=out,
        model_name="rfcn",
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        verify=False,
    )


@pytest.fixture(scope="session")
def loaded(exported):
    import tensorflow as tf

    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return sample_jpeg()


@pytest.fixture(scope="session")
def jpeg_image(jpeg_bytes):
    """uint8 [H, W, 3], decoded as the encoded signature decodes it."""
    return decode(jpeg_bytes)


@pytest.fixture(scope="session")
def standin_export(tmp_path_factory):
    """The known-answer stand-in exported as <tmp>/models/standin/1 (unverified)."""
    from rfcn_tf.export import export_saved_model

    out = tmp_path_factory.mktemp("models")
    return export_saved_model(
        StandInDetector(),
        class_names=["cat", "dog"],
        out_dir=out,
        model_name="standin",
        min_size=64,
        max_size=96,
        verify=False,
    )
