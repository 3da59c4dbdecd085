"""Matching predictions (anchors, RoIs) to ground truth by a similarity such as IoU.

Shape shorthand:
    ...  optional leading batch dimensions (e.g. B), the same for all arguments
    N    predictions (anchors or RoIs)
    G    padded ground-truth boxes

Labels: each prediction gets the label of the IoU interval its best similarity falls in;
for the RPN (Faster R-CNN sec. 3.1.2) thresholds (0.3, 0.7) with labels (0, -1, 1):
IoU < 0.3 negative (0), 0.3 <= IoU < 0.7 ignored (-1), IoU >= 0.7 positive (1).
"""

import tensorflow as tf

__all__ = ["Matcher"]


class Matcher:
    """Assigns each prediction its best ground truth and an interval label.

    Args:
      thresholds: increasing similarity thresholds t_1 <= ... <= t_T; they cut the real line
        into T + 1 intervals [-inf, t_1), [t_1, t_2), ..., [t_T, inf).
      labels: T + 1 labels in {-1, 0, 1} (ignore, negative, positive), one per interval.
      allow_low_quality_matches: Faster R-CNN sec. 3.1.2, condition (i): for each ground-truth
        box, the prediction(s) with the highest IoU (ties included) become positive, even when
        below the top threshold, so every object has an anchor. A ground truth whose best IoU
        is 0 forces nothing (otherwise every non-overlapping anchor would become positive).
        Forced predictions keep their own best ground truth as `matched_gt_index`.

    Call:
      similarity: [..., N, G] float, e.g. IoU(predictions, gt).
      gt_mask: [..., G] bool, True for real ground truth; padding columns never match.

    Returns:
      matched_gt_index: [..., N] int32 in [0, G), the argmax over real ground truth (ties: the
        lower index); 0 where the image has no real ground truth (then meaningless).
      match_labels: [..., N] int32 in {-1, 0, 1}; all 0 (negative) when the image has no real
        ground truth.
    """

    def __init__(self, *, thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True):
        thresholds = tuple(float(t) for t in thresholds)
        labels = tuple(int(l) for l in labels)
        if any(b < a for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"thresholds must be non-decreasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"labels must have len(thresholds) + 1 = {len(thresholds) + 1} "
                f"entries, got {labels}"
            )
        if any(l not in (-1, 0, 1) for l in labels):
            raise ValueError(f"labels must be in {{-1, 0, 1}}, got {labels}")
        self.thresholds = thresholds
        self.labels = labels
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def get_config(self):
        return {
            "thresholds": self.thresholds,
            "labels": self.labels,
            "allow_low_quality_matches": self.allow_low_quality_matches,
        }

    def __call__(self, similarity, gt_mask):
        similarity = tf.convert_to_tensor(similarity)
        if not similarity.dtype.is_floating:
            similarity = tf.cast(similarity, tf.float32)
        gt_mask = tf.cast(gt_mask, tf.bool)
        if similarity.shape.rank is not None and similarity.shape.rank < 2:
            raise ValueError(f"similarity must be [..., N, G], got shape {similarity.shape}")
        mask = gt_mask[..., None, :]  # [..., 1, G]
        # Padding columns get -inf so they never win the argmax nor a low-quality match.
        neg_inf = tf.constant(-float("inf"), similarity.dtype)
        sim = tf.where(mask, similarity, neg_inf)  # [..., N, G]
        has_gt = tf.reduce_any(gt_mask, axis=-1)[..., None]  # [..., 1]

        num_gt = tf.shape(sim)[-1]
        best = tf.reduce_max(sim, axis=-1)  # [..., N]
        # argmax with ties to the lower index; an empty G axis is handled by has_gt below.
        matched = tf.cond(
            num_gt > 0,
            lambda: tf.argmax(sim, axis=-1, output_type=tf.int32),
            lambda: tf.zeros(tf.shape(sim)[:-1], tf.int32),
        )

        labels = tf.fill(tf.shape(best), self.labels[0])
        for t, l in zip(self.thresholds, self.labels[1:]):
            labels = tf.where(best >= t, tf.constant(l, tf.int32), labels)

        if self.allow_low_quality_matches:
            best_per_gt = tf.reduce_max(sim, axis=-2, keepdims=True)  # [..., 1, G]
            is_best = (sim == best_per_gt) & mask & (best_per_gt > 0)  # [..., N, G]
            forced = tf.reduce_any(is_best, axis=-1)  # [..., N]
            labels = tf.where(forced, tf.constant(1, tf.int32), labels)

        labels = tf.where(has_gt, labels, tf.zeros_like(labels))
        matched = tf.where(has_gt, matched, tf.zeros_like(matched))
        return matched, labels
