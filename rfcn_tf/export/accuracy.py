"""Accuracy of the deployment paths on one split: the SavedModel's ``serving_default``, fp32
and int8 onnxruntime, scored by the evaluator on the same images (what ``python -m
rfcn_tf.export --onnx --int8`` reports and ``benchmarks/int8_accuracy.py`` prints).

Above ``rfcn_tf.export.onnx`` and ``rfcn_tf.inference.backends`` (whose ``OnnxBackend`` uses
the former), so neither imports the other back.
"""

from __future__ import annotations

import os

# The three serving paths ``--int8`` compares, in report order.
ACCURACY_PATHS = ("TF", "ORT fp32", "int8")


def compare_accuracy(
    config,
    saved_model_dir: os.PathLike,
    fp32_path: os.PathLike,
    int8_path: os.PathLike,
    *,
    split: str | None = None,
    max_images: int | None = None,
) -> dict[str, dict]:
    """The evaluator's metrics of the SavedModel's ``serving_default``, fp32 and int8
    onnxruntime on the same images of one split.

    The split's batched features (resized as evaluation resizes) are read once and held in
    memory, so the three backends score the same first N images (an evaluation pass keeps
    the split's order) without decoding them three times.

    Args:
      config: the export's config tree (``data.*`` builds the split; ``eval.batch_size``,
        ``eval.score_threshold`` as ``evaluate_split``).
      split: default ``eval.split``, else ``data.val_split`` (where the run validates).
      max_images: the first this many images (None: the whole split).

    Returns:
      {"TF" | "ORT fp32" | "int8": ``compute_metrics``' dict (``voc07`` / ``voc2010`` mAP@0.5,
      ``coco`` AP50 and AP, ``num_images``)}.
    """
    from rfcn_tf.data.pipeline import build_dataset, source_info
    from rfcn_tf.evaluation.evaluator import evaluate_detector
    from rfcn_tf.inference.backends import OnnxBackend, SavedModelBackend

    split = split or config.eval.split or config.data.val_split
    info = source_info(config.data, split=split)
    dataset = build_dataset(
        config.data, split=split, training=False, batch_size=config.eval.batch_size
    )
    batches, count = [], 0
    for features in dataset:  # whole batches; evaluate_detector stops at max_images
        batches.append({k: v.numpy() for k, v in features.items()})
        count += int((batches[-1]["image_ids"] >= 0).sum())
        if max_images is not None and count >= max_images:
            break
    backends = (
        SavedModelBackend(str(saved_model_dir)),
        OnnxBackend(str(fp32_path)),
        OnnxBackend(str(int8_path)),
    )
    return {
        name: evaluate_detector(
            backend.detect_fn(),
            batches,
            class_names=list(info.class_names),
            category_ids=info.category_ids,
            max_images=max_images,
            progress=False,
            score_threshold=config.eval.score_threshold,
        )
        for name, backend in zip(ACCURACY_PATHS, backends)
    }


def describe_accuracy(metrics: dict[str, dict], split: str = "validation") -> str:
    """``compare_accuracy``'s result as the export summary's words: "mAP@0.5 TF 0.926 / ORT
    fp32 0.926 / int8 0.921, COCO AP 0.563 / 0.572 / 0.579 on 50 validation images"
    (mAP@0.5: VOC07's 11-point one)."""
    voc = " / ".join(f"{name} {metrics[name]['voc07']['mAP']:.3f}" for name in ACCURACY_PATHS)
    coco = " / ".join(f"{metrics[name]['coco']['AP']:.3f}" for name in ACCURACY_PATHS)
    images = metrics[ACCURACY_PATHS[0]]["num_images"]
    return f"mAP@0.5 {voc}, COCO AP {coco} on {images} {split} images"
