"""``model.anchors.scales: auto`` (and ``ratios: auto``): anchors fitted to the training split.

At the start of training (``rfcn_tf.training.load_run_config``, next to the epochs schedule),
before ``--print-config`` and the run's ``config.yaml``, an ``auto`` field is replaced by the
anchors ``python -m rfcn_tf.data.inspect --suggest`` prints for the training split: the boxes
of ``data.train_split`` (at most ``AUTO_MAX_IMAGES`` images, in source order) resized as
evaluation resizes (shorter side the median of ``data.scales``, longer side <= ``data.max_size``),
then ``rfcn_tf.data.inspect.suggest_anchors`` (scales: a geometric series over the 2nd..98th
percentile of sqrt(area); ratios: percentiles of height/width). The run folder's config.yaml
records the concrete numbers, so evaluation, export, ``rfcn_tf.load`` and a resumed run use
exactly these anchors (a resume recomputes them from the same split and gets the same list).

Matching is measured as the RPN's best case: each box against every anchor shape centred on
it (shape-only IoU, the standard measure of anchor studies); the real grid offsets anchors by
up to half a stride, which lowers the IoU of small boxes a little.
"""

from __future__ import annotations

import dataclasses
import logging

__all__ = ["AUTO", "AUTO_MAX_IMAGES", "resolve_auto_anchors", "uses_auto_anchors"]

logger = logging.getLogger("rfcn_tf.train")

AUTO = "auto"
# Images read to fit the anchors (decoded once, before training): enough for stable
# percentiles, bounded for COCO-sized splits.
AUTO_MAX_IMAGES = 2000


def uses_auto_anchors(anchors_cfg) -> bool:
    """True when ``model.anchors.scales`` or ``.ratios`` is ``"auto"``."""
    return anchors_cfg.scales == AUTO or anchors_cfg.ratios == AUTO


def resolve_auto_anchors(cfg, *, boxes_hw=None):
    """``cfg`` with ``model.anchors`` ``auto`` fields replaced by numbers from the training split.

    Args:
      cfg: the config tree; returned unchanged when no anchor field is ``auto``.
      boxes_hw: float [N, 2] (height, width) of the training boxes at the training scale;
        None reads them from ``data.train_split`` (``inspect.training_scale_boxes``).

    Returns:
      A new ``Config`` (the input is not modified).

    Raises:
      ConfigError: the training split has no boxes to fit anchors to.
    """
    anchors = cfg.model.anchors
    if not uses_auto_anchors(anchors):
        return cfg
    import numpy as np

    from rfcn_tf.data import inspect
    from rfcn_tf.errors import ConfigError

    if boxes_hw is None:
        from rfcn_tf.data.pipeline import build_source, evaluation_scale

        dataset, _ = build_source(cfg.data, split=cfg.data.train_split)
        boxes_hw = inspect.training_scale_boxes(
            dataset, scale=evaluation_scale(cfg.data.scales), max_size=int(cfg.data.max_size),
            max_images=AUTO_MAX_IMAGES)
    boxes_hw = np.asarray(boxes_hw, np.float64).reshape(-1, 2)
    if len(boxes_hw) == 0:
        raise ConfigError(f"model.anchors {AUTO!r} needs boxes to fit to, but training split "
                          f"{cfg.data.train_split!r} has none: set model.anchors.scales and "
                          f"ratios to numbers")
    suggestion = inspect.suggest_anchors(boxes_hw)
    scales = suggestion["scales"] if anchors.scales == AUTO else list(anchors.scales)
    ratios = suggestion["ratios"] if anchors.ratios == AUTO else list(anchors.ratios)
    scales = [float(s) for s in scales]
    ratios = [float(r) for r in ratios]
    unmatched = inspect.unmatched_share(boxes_hw, scales, ratios)
    logger.info("model.anchors from %d boxes of split %r: scales=%s%s, ratios=%s%s; %.1f%% of "
                "the boxes match no anchor at IoU 0.5 (anchor centred on the box)",
                len(boxes_hw), cfg.data.train_split, scales,
                " (auto)" if anchors.scales == AUTO else "", ratios,
                " (auto)" if anchors.ratios == AUTO else "", 100 * unmatched)
    model = dataclasses.replace(cfg.model, anchors=dataclasses.replace(
        anchors, scales=scales, ratios=ratios))
    return dataclasses.replace(cfg, model=model)
