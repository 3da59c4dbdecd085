"""Fixed-size training samples: balanced random sampling (Faster R-CNN sec. 3.1.3).

Shape shorthand:
    B  images in the batch
    N  candidates per image (anchors or RoIs)

The sampler returns a boolean mask of the shape of its input, built with top_k (a static k)
and scatter, so they run inside tf.function / XLA with static shapes and no
per-image Python lists.
"""

import numpy as np
import tensorflow as tf

__all__ = ["mask_from_top_k", "sample_balanced"]


def _random_keys(shape, seed):
    """Uniform [0, 1) keys of `shape`.

    seed None: the stateful global generator (fresh keys every step: what training wants);
    an int or an int tensor [2]: stateless and reproducible (the same seed gives the same
    keys; a training loop that wants both passes a per-step seed such as (seed, step)).
    """
    if seed is None:
        return tf.random.uniform(shape, dtype=tf.float32)
    if isinstance(seed, (int, np.integer)):
        seed = tf.constant([int(seed), 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            f"seed must be None, an int or a [2] integer tensor, got shape {seed.shape}"
        )
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


def mask_from_top_k(keys, k, count):
    """[B, N] bool: the first count[b] of the top-k entries of keys[b] (keys > -inf only).

    k is a Python int or scalar tensor (clamped to N); count [B] int32.
    """
    n = tf.shape(keys)[1]
    k = tf.minimum(k, n)
    values, indices = tf.math.top_k(keys, k=k, sorted=True)  # [B, k]
    take = (tf.range(k)[None, :] < count[:, None]) & (values > -np.inf)  # [B, k]
    b = tf.shape(keys)[0]
    batch_idx = tf.broadcast_to(tf.range(b)[:, None], tf.shape(indices))
    scatter_idx = tf.stack([batch_idx, indices], axis=-1)  # [B, k, 2]
    mask = tf.scatter_nd(scatter_idx, tf.cast(take, tf.int32), tf.shape(keys))
    return mask > 0


def sample_balanced(labels, *, batch_size_per_image, positive_fraction, seed=None):
    """Random mini-batch of positives and negatives per image (Faster R-CNN sec. 3.1.3).

    Up to floor(batch_size_per_image * positive_fraction) positives are drawn uniformly at
    random; the rest of the batch is filled with random negatives (so with few positives the
    batch is padded with negatives, as in the paper); when there are too few of both the sample
    is smaller. Ignored candidates (-1) are never selected.

    Args:
      labels: [B, N] int, -1 ignore, 0 negative, 1 positive.
      batch_size_per_image: Python int, sampled candidates per image (256 for the RPN).
      positive_fraction: float in [0, 1], the largest share of positives (0.5 for the RPN).
      seed: None (stateful RNG), an int or a [2] int tensor (stateless, reproducible).

    Returns:
      selected: [B, N] bool. Per image, sum(selected & positive) = min(#pos, floor(S * f)) and
      sum(selected & negative) = min(#neg, S - that), S = batch_size_per_image.
    """
    batch_size_per_image = int(batch_size_per_image)
    if batch_size_per_image <= 0:
        raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank != 2:
        raise ValueError(f"labels must be [B, N], got shape {labels.shape}")
    max_pos = int(batch_size_per_image * positive_fraction)
    keys = _random_keys(tf.shape(labels), seed)
    positive, negative = labels == 1, labels == 0
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), max_pos)  # [B]
    num_neg = batch_size_per_image - num_pos
    pos_keys = tf.where(positive, keys, -np.inf)
    neg_keys = tf.where(negative, keys, -np.inf)
    selected_pos = (
        mask_from_top_k(pos_keys, max_pos, num_pos) if max_pos > 0 else tf.zeros_like(positive)
    )
    selected_neg = mask_from_top_k(neg_keys, batch_size_per_image, num_neg)
    return selected_pos | selected_neg
