"""Anchor grid for the RPN (Faster R-CNN sec. 3.1.1, "Anchors").

Shape shorthand:
    h, w  feature-map height and width (stride `stride` pixels per cell)
    A     anchors per location = len(scales) * len(aspect_ratios)
    N     h * w * A anchors

Conventions (chosen here, relied upon by the RPN head, proposals and targets):
  * Centres: anchor centres sit at the centres of the stride x stride pixel cells,
    ((y + 0.5) * stride, (x + 0.5) * stride) for feature cell (y, x) — TF Model Garden's
    convention. In continuous pixel coordinates that is the centre of the image patch the cell
    summarizes (py-faster-rcnn used (x * 16 + 7.5) with its +1 pixel widths; detectron2 uses
    x * stride).
  * Sizes: aspect ratio = height / width, area = scale ** 2, so an anchor is
    scale * sqrt(ratio) high and scale / sqrt(ratio) wide; no rounding to whole pixels.
  * Order: (y, x, anchor) with the anchor index a = scale_index * len(aspect_ratios) +
    ratio_index (scales outer, ratios inner). An RPN output [B, h, w, A] (or [B, h, w, 4A]
    reshaped to [B, h, w, A, 4]) reshaped to [B, h*w*A] lines up with the anchors row by row.
  * Boxes are yxyx float32 pixels of the (padded) input image; they are not clipped.
"""

import math

import tensorflow as tf

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Makes the [h*w*A, 4] yxyx anchor grid of a stride-`stride` feature map.

    Args:
      stride: feature stride in pixels (16 for the R-FCN backbones).
      scales: anchor sizes in pixels, sqrt of the area (Faster R-CNN: 128, 256, 512).
      aspect_ratios: height / width ratios (Faster R-CNN: 0.5, 1, 2).

    Example:
      >>> gen = AnchorGenerator(stride=16, scales=(32,), aspect_ratios=(1.0,))
      >>> gen(1, 2).numpy()  # centres (8, 8) and (8, 24)
      array([[-8., -8., 24., 24.], [-8.,  8., 24., 40.]], dtype=float32)
    """

    def __init__(self, *, stride=16, scales=(128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0)):
        scales = tuple(float(s) for s in scales)
        aspect_ratios = tuple(float(r) for r in aspect_ratios)
        if not (stride > 0):
            raise ValueError(f"stride must be positive, got {stride}")
        if not scales or any(not (s > 0) for s in scales):
            raise ValueError(f"scales must be non-empty and positive, got {scales}")
        if not aspect_ratios or any(not (r > 0) for r in aspect_ratios):
            raise ValueError(f"aspect_ratios must be non-empty and positive, got {aspect_ratios}")
        self.stride = stride
        self.scales = scales
        self.aspect_ratios = aspect_ratios
        # [A, 4] anchors centred at (0, 0): (-h/2, -w/2, h/2, w/2), scales outer, ratios inner.
        cells = []
        for s in scales:
            for r in aspect_ratios:
                h, w = s * math.sqrt(r), s / math.sqrt(r)
                cells.append((-0.5 * h, -0.5 * w, 0.5 * h, 0.5 * w))
        self._cell_anchors = cells

    @property
    def num_anchors_per_location(self):
        """A = len(scales) * len(aspect_ratios)."""
        return len(self._cell_anchors)

    def cell_anchors(self):
        """[A, 4] float32 yxyx anchors of one location, centred at (0, 0)."""
        return tf.constant(self._cell_anchors, tf.float32)

    def __call__(self, feature_height, feature_width):
        """Anchors of an h x w feature map.

        Args:
          feature_height: h, a Python int or a scalar int tensor (may be unknown while tracing).
          feature_width: w, likewise.

        Returns:
          [h*w*A, 4] float32 yxyx pixels, ordered (y, x, anchor) as described in the module
          docstring.
        """
        h = tf.cast(feature_height, tf.float32)
        w = tf.cast(feature_width, tf.float32)
        stride = tf.constant(float(self.stride), tf.float32)
        cy = (tf.range(h, dtype=tf.float32) + 0.5) * stride  # [h]
        cx = (tf.range(w, dtype=tf.float32) + 0.5) * stride  # [w]
        cy, cx = tf.meshgrid(cy, cx, indexing="ij")  # [h, w]
        centres = tf.stack([cy, cx, cy, cx], axis=-1)  # [h, w, 4]
        anchors = centres[:, :, None, :] + self.cell_anchors()[None, None, :, :]  # [h, w, A, 4]
        return tf.reshape(anchors, [-1, 4])

    def get_config(self):
        """The constructor's keyword arguments."""
        return {"stride": self.stride, "scales": self.scales, "aspect_ratios": self.aspect_ratios}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
