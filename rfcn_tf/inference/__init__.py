"""Inference: THE resize -> pad -> detect -> rescale path and the `Detector` API.

- `rfcn_tf.inference.preprocess`: graph-safe TF functions (`preprocess`, `pad_batch`,
  `boxes_to_original`, `normalize_boxes`, `detect_images`) every consumer shares: the Detector,
  the predict CLI, evaluation (single and multi-scale), the serving graph, the benchmarks.
- `rfcn_tf.inference.detector`: `Detector`, `Detections` and `load(path)` over a checkpoint
  backend or a SavedModel backend (`rfcn_tf.inference.backends`).

This package module imports nothing heavy itself; import the submodules.
"""
