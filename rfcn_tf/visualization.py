"""Drawing detections and ground truth on images (predict CLI, data inspection, TensorBoard).

Pure NumPy + Pillow (no TensorFlow), so it is cheap to import from any CLI.

Shape shorthand:
    H, W  image height and width (pixels)
    N     boxes drawn on one image
    C     classes (without background)

Conventions (docs/ARCHITECTURE.md, "Boxes, images, classes"):
    - images are uint8 RGB `[H, W, 3]`;
    - boxes are `[y1, x1, y2, x2]` float in PIXELS of the image they are drawn on (not normalized;
      scale normalized boxes by (H, W) first);
    - classes are the model's ids 1..C; `class_names[0]` is the name of class 1 (the dataset's
      label 0), i.e. `class_names` is `DatasetInfo.class_names` unchanged.

Naming convention: `boxes_yxyx` pixels, `classes` 1..C ints, `scores` floats in [0, 1].
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "draw_boxes", "make_grid"]

# Golden-ratio hue stepping gives neighbouring class ids well separated hues for any C.
_GOLDEN = 0.6180339887498949


def class_color(class_id: int) -> tuple[int, int, int]:
    """Deterministic, distinct RGB color for a class id (1..C); the same id always maps alike.

    Args:
        class_id: int >= 0 (0 = background is allowed and gets its own color).

    Returns:
        `(r, g, b)` ints in 0..255, bright and saturated so boxes stand out on photos.
    """
    hue = (int(class_id) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font of about `size` pixels: Pillow's bundled scalable default, else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with the label background `rgb` (ITU-R BT.601)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _resolve_color(class_id: int, colors) -> tuple[int, int, int]:
    if colors is None:
        return class_color(class_id)
    if isinstance(colors, Mapping):
        color = colors.get(class_id)
        if color is None:
            return class_color(class_id)
    else:  # sequence indexed like class_names: colors[0] is class 1
        if not 1 <= class_id <= len(colors):
            raise ValueError(
                f"colors has {len(colors)} entries (colors[0] is class 1) but class id "
                f"{class_id} was drawn"
            )
        color = colors[class_id - 1]
    color = tuple(int(c) for c in color)
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError(f"color of class {class_id} must be 3 ints in 0..255, got {color}")
    return color


def draw_boxes(
    image: np.ndarray,
    boxes_yxyx: np.ndarray,
    *,
    classes: np.ndarray,
    class_names: Sequence[str],
    scores: np.ndarray | None = None,
    colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
) -> np.ndarray:
    """Draws labelled boxes on a copy of `image`.

    Each box is outlined in its class color; a filled label of the same color sits on the box's
    top edge (above it when there is room, else just inside) reading `"name 0.93"` (`"name"` when
    `scores` is None). Boxes are drawn in the given order, so later boxes cover earlier ones: pass
    detections sorted by ascending score to keep the best label on top. Coordinates outside the
    image are clipped by the drawing; a box with non-positive height or width is drawn as a line.

    Args:
        image: uint8 `[H, W, 3]` RGB. Not modified.
        boxes_yxyx: float `[N, 4]` (or `[4]` for one box) `[y1, x1, y2, x2]` in pixels of
            `image`. N may be 0.
        classes: int `[N]` class ids in 1..C (model convention; 0 is background and rejected).
        class_names: C names; `class_names[0]` names class 1.
        scores: optional float `[N]`, printed with two decimals.
        colors: optional per-class colors: a mapping `{class_id: (r, g, b)}` (ids missing from it
            use the default palette) or a sequence of C colors indexed like `class_names`.
            Default: `class_color(class_id)`.
        line_width: box outline width in pixels; default scales with the image
            (max(1, round(min(H, W) / 200))).
        font_size: label font height in pixels; default max(10, round(min(H, W) / 40)).

    Returns:
        uint8 `[H, W, 3]`: a new array with the boxes drawn.

    Raises:
        ValueError: naming the argument and its value, for a non-uint8 or non-RGB image,
            mismatched lengths, a class id outside 1..C, or non-finite box coordinates.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 [H, W, 3] RGB, got dtype {image.dtype} shape {image.shape}"
        )
    boxes = np.asarray(boxes_yxyx, dtype=np.float64)
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_yxyx must be [N, 4], got shape {boxes.shape}")
    n = boxes.shape[0]
    classes = np.asarray(classes).reshape(-1)
    if classes.shape[0] != n:
        raise ValueError(f"classes has {classes.shape[0]} entries but boxes_yxyx has {n} rows")
    if n and not np.all(np.equal(np.mod(classes, 1), 0)):
        raise ValueError(f"classes must be integer ids 1..C, got {classes}")
    classes = classes.astype(np.int64)
    num_classes = len(class_names)
    bad = np.flatnonzero((classes < 1) | (classes > num_classes))
    if bad.size:
        raise ValueError(
            f"class id {classes[bad[0]]} (row {bad[0]}) is outside 1..{num_classes} "
            f"(class_names has {num_classes} names; class_names[0] is class 1)"
        )
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n:
            raise ValueError(f"scores has {scores.shape[0]} entries but boxes_yxyx has {n} rows")
    not_finite = np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))
    if not_finite.size:
        raise ValueError(
            f"boxes_yxyx row {not_finite[0]} is not finite: {boxes[not_finite[0]].tolist()}"
        )

    height, width = image.shape[:2]
    if line_width is None:
        line_width = max(1, int(round(min(height, width) / 200)))
    if font_size is None:
        font_size = max(10, int(round(min(height, width) / 40)))
    font = _font(int(font_size))

    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        y1, x1, y2, x2 = boxes[i]
        # PIL wants x0 <= x1 and y0 <= y1; a reversed box is drawn over its sorted corners.
        x_lo, x_hi = sorted((x1, x2))
        y_lo, y_hi = sorted((y1, y2))
        class_id = int(classes[i])
        color = _resolve_color(class_id, colors)
        draw.rectangle([x_lo, y_lo, x_hi, y_hi], outline=color, width=int(line_width))

        label = str(class_names[class_id - 1])
        if scores is not None:
            label = f"{label} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left, bottom - top
        margin = 2
        label_h = text_h + 2 * margin
        label_x = min(max(x_lo, 0), max(width - text_w - 2 * margin, 0))
        label_y = y_lo - label_h if y_lo - label_h >= 0 else max(y_lo, 0)
        draw.rectangle(
            [label_x, label_y, label_x + text_w + 2 * margin, label_y + label_h], fill=color
        )
        draw.text(
            (label_x + margin - left, label_y + margin - top),
            label,
            fill=_text_color(color),
            font=font,
        )
    return np.asarray(canvas, dtype=np.uint8)


def make_grid(
    images: Sequence[np.ndarray], ncols: int, *, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
    """Tiles images into one uint8 image, row-major, `ncols` per row.

    Every cell is as large as the largest image (max height x max width); each image sits at its
    cell's top-left corner, the rest of the cell and `padding` pixels between and around cells are
    `pad_value`. Grayscale `[H, W]` images are repeated to RGB.

    Args:
        images: non-empty sequence of uint8 `[Hi, Wi, 3]` (or `[Hi, Wi]`) images; sizes may differ.
        ncols: images per row, >= 1 (the last row may be partly empty).
        padding: pixels of `pad_value` between cells and along the border, >= 0.
        pad_value: fill value 0..255.

    Returns:
        uint8 `[rows * (Hmax + padding) + padding, ncols' * (Wmax + padding) + padding, 3]` with
        rows = ceil(len / ncols') and ncols' = min(ncols, len(images)).
    """
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value}")
    if len(images) == 0:
        raise ValueError("make_grid needs at least one image, got an empty sequence")
    rgb = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"images[{i}] must be uint8, got {img.dtype}")
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"images[{i}] must be [H, W, 3] or [H, W], got shape {img.shape}")
        rgb.append(img)
    ncols = min(int(ncols), len(rgb))
    nrows = -(-len(rgb) // ncols)
    cell_h = max(img.shape[0] for img in rgb)
    cell_w = max(img.shape[1] for img in rgb)
    grid = np.full(
        (nrows * (cell_h + padding) + padding, ncols * (cell_w + padding) + padding, 3),
        pad_value,
        dtype=np.uint8,
    )
    for idx, img in enumerate(rgb):
        r, c = divmod(idx, ncols)
        y0 = padding + r * (cell_h + padding)
        x0 = padding + c * (cell_w + padding)
        grid[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
    return grid
