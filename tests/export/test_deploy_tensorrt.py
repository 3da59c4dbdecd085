"""TF-TRT: the unavailable branch for real (this TensorFlow has no TensorRT), the conversion
branch with the converter replaced by a recorder that checks the arguments and the calls."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.export import tensorrt as trt


def _tensorrt_in_this_tensorflow() -> bool:
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils
    except ImportError:
        return False
    return bool(_pywrap_py_utils.is_tensorrt_enabled())


def test_status_matches_the_probe():
    available, reason = trt.tensorrt_status()
    expected = _tensorrt_in_this_tensorflow() and bool(tf.config.list_physical_devices("GPU"))
    assert available == expected
    if not _tensorrt_in_this_tensorflow():
        assert "without TensorRT" in reason or "no tf2tensorrt" in reason


def test_require_raises_with_the_onnx_way_forward():
    if trt.tensorrt_status()[0]:
        pytest.skip("TF-TRT is available on this machine: the unavailable branch cannot occur")
    with pytest.raises(trt.TensorRTUnavailableError) as info:
        trt.require_tensorrt()
    message = str(info.value)
    assert message.startswith("TF-TRT is unavailable: ")
    assert "--onnx" in message and "trtexec --onnx=" in message


def test_convert_refuses_before_touching_anything(tmp_path):
    if trt.tensorrt_status()[0]:
        pytest.skip("TF-TRT is available on this machine")
    with pytest.raises(trt.TensorRTUnavailableError):
        trt.convert_saved_model(tmp_path / "in", output_dir=tmp_path / "out", precision="fp16")
    assert not (tmp_path / "out").exists()


def test_cli_exits_nonzero_with_a_clear_message(tmp_path, capsys):
    if trt.tensorrt_status()[0]:
        pytest.skip("TF-TRT is available on this machine")
    from rfcn_tf.export.__main__ import main

    code = main(
        [
            "--checkpoint",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "m"),
            "--tensorrt",
            "int8",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "TensorRTUnavailableError" in err and "--onnx" in err
    assert not (tmp_path / "m").exists()  # failed before building or exporting anything


class RecordingConverter:
    """Stands in for TrtGraphConverterV2: records its arguments and the calls made on it."""

    instances: list[RecordingConverter] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[str, object]] = []
        RecordingConverter.instances.append(self)

    def convert(self, calibration_input_fn=None):
        batches = list(calibration_input_fn()) if calibration_input_fn else None
        self.calls.append(("convert", batches))

    def build(self, input_fn):
        self.calls.append(("build", list(input_fn())))

    def save(self, output_saved_model_dir):
        self.calls.append(("save", output_saved_model_dir))


@pytest.fixture
def fake_tensorrt(monkeypatch):
    RecordingConverter.instances = []
    monkeypatch.setattr(trt, "tensorrt_status", lambda: (True, "pretend"))
    monkeypatch.setattr(trt, "_converter_class", lambda: RecordingConverter)
    return RecordingConverter


@pytest.mark.parametrize("precision", ["fp32", "fp16", "FP16"])
def test_float_conversion_arguments(fake_tensorrt, tmp_path, precision):
    out = trt.convert_saved_model(
        tmp_path / "rfcn" / "1", output_dir=tmp_path / "trt" / "1", precision=precision
    )
    assert out == tmp_path / "trt" / "1"
    (converter,) = fake_tensorrt.instances
    assert converter.kwargs == {
        "input_saved_model_dir": str(tmp_path / "rfcn" / "1"),
        "input_saved_model_signature_key": "serving_default",
        "precision_mode": precision.upper(),
        "use_dynamic_shape": True,
        "dynamic_shape_profile_strategy": "Range",
        "max_workspace_size_bytes": 1 << 30,
        "minimum_segment_size": 3,
        "maximum_cached_engines": 16,
        "use_calibration": False,
        "allow_build_at_runtime": True,
    }
    assert converter.calls == [("convert", None), ("save", str(tmp_path / "trt" / "1"))]


def test_int8_calibrates_and_builds_on_the_images(fake_tensorrt, tmp_path):
    images = [np.full((1, 48, 64, 3), i, np.uint8) for i in range(3)]
    trt.convert_saved_model(
        tmp_path / "in",
        output_dir=tmp_path / "out",
        precision="int8",
        calibration_images=images,
        minimum_segment_size=5,
    )
    (converter,) = fake_tensorrt.instances
    assert converter.kwargs["precision_mode"] == "INT8"
    assert converter.kwargs["use_calibration"] is True
    assert converter.kwargs["minimum_segment_size"] == 5
    names = [name for name, _ in converter.calls]
    assert names == ["convert", "build", "save"]
    for _, batches in converter.calls[:2]:
        assert len(batches) == 3
        for i, batch in enumerate(batches):
            assert list(batch) == ["input_tensor"]
            assert batch["input_tensor"].dtype == tf.uint8
            np.testing.assert_array_equal(batch["input_tensor"].numpy(), images[i])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"precision": "int4"}, ValueError, "precision must be one of"),
        ({"precision": "int8"}, ValueError, "INT8 needs calibration_images"),
        (
            {
                "precision": "int8",
                "calibration_images": [
                    np.zeros((1, 8, 8, 3), np.uint8),
                    np.zeros((1, 8, 9, 3), np.uint8),
                ],
            },
            ValueError,
            "must share one",
        ),
    ],
)
def test_argument_errors(fake_tensorrt, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        trt.convert_saved_model(tmp_path / "in", output_dir=tmp_path / "out", **kwargs)
    assert fake_tensorrt.instances == []


def test_existing_output_is_not_overwritten(fake_tensorrt, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        trt.convert_saved_model(tmp_path / "in", output_dir=tmp_path / "out", precision="fp16")
