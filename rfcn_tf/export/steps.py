"""The export CLI's library steps: config, class names, the restored model, ONNX check images.

``python -m rfcn_tf.export`` (``rfcn_tf/export/__main__.py``) calls these in order; they read the
run folder through ``rfcn_tf.run_dir`` and restore through ``rfcn_tf.inference.backends``, as
evaluate and predict do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rfcn_tf.run_dir import class_names_for, find_checkpoint
from rfcn_tf.run_dir import resolve_config as _resolve_config


def resolve_config(
    config: str | None, overrides: Sequence[str], *, checkpoint: str | None
) -> tuple[Any, str]:
    """The config (``--config``, else the run's config.yaml beside the checkpoint, else the
    default preset) with ``overrides``; returns (config, where it came from)."""
    return _resolve_config(config, overrides, checkpoint=checkpoint)


def class_names(config: Any, checkpoint: str) -> tuple[list[str], str]:
    """Names of classes 1..C and where they came from: ``data.class_names``, else the
    ``classes.txt`` training wrote in the run folder, else the dataset source's. Fails first,
    naming the path, when ``checkpoint`` holds no checkpoint."""
    find_checkpoint(checkpoint, what="--checkpoint")
    return class_names_for(config, checkpoint)


def load_model(config: Any, checkpoint: str, *, num_classes: int) -> tuple[Any, str]:
    """The detector of ``config.model`` with a training checkpoint's weights (run folder,
    checkpoint folder or prefix; the class count is checked before restoring); returns
    (model, the checkpoint prefix restored)."""
    from rfcn_tf.inference.backends import load_checkpoint_model

    return load_checkpoint_model(
        config, checkpoint, num_classes=num_classes, dataset_desc=f"the {num_classes}-class export"
    )


def onnx_check_images(config: Any, count: int = 2) -> tuple[list | None, str]:
    """A few validation images (uint8 [1, H, W, 3]) for the ONNX check and their description;
    (None, why) when the dataset cannot be read here (the check then uses generated images)."""
    try:
        from rfcn_tf.data.pipeline import build_source

        examples, _ = build_source(config.data, split=config.data.val_split)
        images = [example["image"].numpy()[None] for example in examples.take(count)]
    except Exception as exc:  # the dataset is optional for exporting
        return None, f"generated images (dataset unreadable: {type(exc).__name__})"
    if not images:
        return None, "generated images (empty validation split)"
    return images, f"{len(images)} {config.data.val_split} images"


def tensorrt_step(path, out, config: Any, precision: str, calibration_count: int) -> str:
    """TF-TRT conversion of the version at ``path`` into ``<out>_trt_<precision>/<version>``."""
    from rfcn_tf.export.tensorrt import convert_saved_model, dataset_calibration_images

    calibration = None
    if precision == "int8":
        calibration = dataset_calibration_images(config.data, count=calibration_count)
    trt_path = convert_saved_model(
        path,
        output_dir=out.parent / f"{out.name}_trt_{precision}" / path.name,
        precision=precision,
        calibration_images=calibration,
    )
    return f"TF-TRT {precision} at {trt_path}"


def onnx_step(
    path,
    out,
    config: Any,
    *,
    opset: int,
    int8: bool,
    calibration_count: int,
    eval_images: int = 0,
    stage=None,
) -> list[str]:
    """ONNX conversion of the version at ``path`` into ``<out>_onnx/<version>/model.onnx``,
    checked against the SavedModel; with ``int8`` also the quantized model (evaluated against
    both on ``eval_images`` validation images). Returns the summary parts."""
    import tensorflow as tf

    from rfcn_tf.export import onnx as onnx_lib

    loaded = tf.saved_model.load(str(path))  # once, for the conversion and the check
    onnx_path = onnx_lib.export_onnx(
        path,
        output_path=out.parent / f"{out.name}_onnx" / path.name / "model.onnx",
        opset=opset,
        loaded=loaded,
    )
    images, described = onnx_check_images(config)
    comparison = onnx_lib.verify_onnx(onnx_path, path, images=images, loaded=loaded)
    parts = [f"ONNX at {onnx_path} (onnxruntime matches on {described}: {comparison.describe()})"]
    if int8:
        if stage is not None:
            stage(
                f"quantizing to INT8 on {calibration_count} calibration images"
                + (
                    f", then evaluating TF, fp32 and int8 on {eval_images} images"
                    if eval_images
                    else ""
                )
            )
        parts.append(
            int8_step(
                onnx_path,
                config,
                count=calibration_count,
                check_images=images,
                saved_model=path,
                eval_images=eval_images,
            )
        )
    return parts


def int8_step(
    onnx_path, config: Any, *, count: int, check_images=None, saved_model=None, eval_images=0
) -> str:
    """Quantizes ``onnx_path`` to INT8 beside it (calibrated on ``count`` validation images),
    compares it with the fp32 model on the check images (matched detections, speed) and, with
    ``eval_images`` > 0, evaluates TF (the SavedModel at ``saved_model``), fp32 and int8
    onnxruntime on that many validation images; returns the summary part."""
    import numpy as np

    from rfcn_tf.export import accuracy as accuracy_lib
    from rfcn_tf.export import onnx as onnx_lib

    try:
        from rfcn_tf.data.pipeline import build_source

        examples, _ = build_source(config.data, split=config.data.val_split)
        calibration = [e["image"].numpy()[None] for e in examples.take(count)]
    except Exception as exc:
        raise ValueError(
            f"--int8 needs calibration images from the {config.data.val_split} "
            f"split, which cannot be read: {exc}"
        ) from None
    int8_path = onnx_lib.quantize_onnx_int8(
        onnx_path, output_path=onnx_path.parent / "model_int8.onnx", calibration_images=calibration
    )
    fp32, int8 = onnx_lib.onnx_session(onnx_path), onnx_lib.onnx_session(int8_path)
    overlaps, seconds = [], {"fp32": 0.0, "int8": 0.0}
    for image in check_images or calibration[:2]:
        outs = {}
        for name, session in (("fp32", fp32), ("int8", int8)):
            onnx_lib.run_onnx(session, image)  # warm
            tic = time.perf_counter()
            outs[name] = onnx_lib.run_onnx(session, image)
            seconds[name] += time.perf_counter() - tic
        overlaps.append(onnx_lib.detection_overlap(outs["fp32"], outs["int8"]))
    matched = sum(m for _, m, _ in overlaps)
    total = sum(t for _, _, t in overlaps)
    mean_iou = float(np.mean([o for o, m, _ in overlaps if m])) if matched else 0.0
    accuracy = ""
    if eval_images > 0 and saved_model is not None:
        split = config.eval.split or config.data.val_split
        metrics = accuracy_lib.compare_accuracy(
            config, saved_model, onnx_path, int8_path, split=split, max_images=eval_images
        )
        accuracy = "; " + accuracy_lib.describe_accuracy(metrics, split)
    return (
        f"INT8 at {int8_path} (convolutions quantized, NMS/pooling fp32; {matched} of "
        f"{total} fp32 detections matched, mean IoU {mean_iou:.3f}; "
        f"{seconds['fp32'] / max(seconds['int8'], 1e-9):.2f}x fp32's speed{accuracy})"
    )


def export_checkpoint(
    checkpoint: str,
    *,
    config: str | None = None,
    overrides: Sequence[str] = (),
    out: str | None = None,
    version: int | None = None,
    verify: bool = True,
    tensorrt: str | None = None,
    onnx: bool = False,
    onnx_opset: int = 17,
    int8: bool = False,
    calibration_images: int = 32,
    int8_eval_images: int = 50,
    stage: Callable[[str], None] = lambda message: None,
) -> str:
    """What ``python -m rfcn_tf.export`` does (its flags, same names); returns the summary.

    Raises:
      ExportError, CheckpointError, ConfigError, ValueError: one-line reasons (the CLI prints
        them).
    """
    started = time.perf_counter()
    config_name = config

    # The serving graph must hold stock ops only: PS-RoI pooling uses the pure-TF twin
    # whatever the training used (the weights are the same).
    config, config_from = resolve_config(
        config_name, list(overrides) + ["model.head.psroi_impl=tf"], checkpoint=checkpoint
    )
    if int8 and not onnx:
        raise ValueError("--int8 quantizes the ONNX model: add --onnx")
    if int8_eval_images < 0:
        raise ValueError(f"--int8-eval-images must be >= 0 (0: skip), got {int8_eval_images}")
    if tensorrt:  # fail before the slow part when TF-TRT cannot run here
        from rfcn_tf.export.tensorrt import require_tensorrt

        require_tensorrt()
    # Without --tensorrt, the checks so far and this one import no TensorFlow: a mistyped
    # value or path fails at once.
    find_checkpoint(checkpoint, what="--checkpoint")
    from rfcn_tf.export.saved_model import ExportError, export_saved_model, next_version

    out = Path(out) if out else Path(config.export.out_dir) / config.export.model_name
    version = version if version is not None else config.export.version
    if version is not None and (out / str(version)).exists():  # fail before building anything
        raise ExportError(
            f"{out / str(version)} already exists; pass another --version (next "
            f"free: {next_version(out)}) or remove it"
        )
    names, names_from = class_names(config, checkpoint)
    stage(
        f"building the {config.model.backbone.name} model ({len(names)} classes) and restoring "
        f"{checkpoint}"
    )
    model, restored = load_model(config, checkpoint, num_classes=len(names))
    from rfcn_tf.data.pipeline import evaluation_scale  # the resize evaluation uses, too

    min_size, max_size = int(evaluation_scale(config.data.scales)), int(config.data.max_size)
    stage(
        f"tracing and saving {out}/<version>"
        + ("; then checking it in a fresh Python process" if verify else "")
    )
    path = export_saved_model(
        model,
        class_names=names,
        out_dir=out.parent,
        model_name=out.name,
        version=version,
        min_size=min_size,
        max_size=max_size,
        verify=verify,
    )
    extras = []
    if tensorrt:
        stage(f"converting with TF-TRT ({tensorrt})")
        extras.append(tensorrt_step(path, out, config, tensorrt, calibration_images))
    if onnx:
        stage(f"converting to ONNX (opset {onnx_opset}) and checking it with onnxruntime")
        extras.extend(
            onnx_step(
                path,
                out,
                config,
                opset=onnx_opset,
                int8=int8,
                calibration_count=calibration_images,
                eval_images=int8_eval_images,
                stage=stage,
            )
        )
    return (
        f"exported {out.name} version {path.name} to {path}: {len(names)} classes (from "
        f"{names_from}), config {config_from}, weights {restored}, resize "
        f"{min_size}/{max_size}"
        + (", verified (stock ops, every signature runs)" if verify else "")
        + ("; " + "; ".join(extras) if extras else "")
        + f"; {time.perf_counter() - started:.1f} s"
    )
