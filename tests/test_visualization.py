"""Tests for rfcn_tf.visualization: pixels where boxes and labels must (and must not) be."""

import numpy as np
import pytest

from rfcn_tf.visualization import class_color, draw_boxes, make_grid

NAMES = ["circle", "square", "triangle"]


def _black(h=120, w=160):
    return np.zeros((h, w, 3), np.uint8)


def test_box_outline_in_class_color_and_interior_untouched():
    img = _black()
    out = draw_boxes(
        img,
        np.array([[40.0, 50.0, 100.0, 120.0]]),
        classes=np.array([2]),
        class_names=NAMES,
        line_width=1,
    )
    color = np.array(class_color(2), np.uint8)
    assert out.dtype == np.uint8 and out.shape == img.shape
    # Outline: left/right columns and bottom row (the top edge carries the label).
    np.testing.assert_array_equal(out[70, 50], color)
    np.testing.assert_array_equal(out[70, 120], color)
    np.testing.assert_array_equal(out[100, 85], color)
    # Interior and far outside stay black.
    assert not out[60:95, 55:115].any()
    assert not out[105:, :].any()
    assert not out[:, 125:].any()
    # Input is not modified.
    assert not img.any()


def test_label_above_box_when_room_and_inside_when_not():
    out = draw_boxes(
        _black(),
        np.array([[40.0, 20.0, 100.0, 140.0]]),
        classes=[1],
        class_names=NAMES,
        scores=[0.93],
        font_size=12,
    )
    color = np.array(class_color(1), np.uint8)
    band = out[20:40, 20:140]  # label sits on top of y1=40
    assert (band == color).all(axis=-1).sum() > 50  # filled label background
    assert (band != color).any(axis=-1).sum() > 5  # text pixels of another color
    # A box touching the top border: label goes inside the box instead.
    out2 = draw_boxes(
        _black(),
        np.array([[0.0, 20.0, 100.0, 140.0]]),
        classes=[1],
        class_names=NAMES,
        font_size=12,
    )
    inside = out2[1:16, 21:60]
    assert (inside == color).all(axis=-1).sum() > 50


def test_label_text_differs_with_and_without_score():
    box = np.array([[40.0, 20.0, 100.0, 140.0]])
    a = draw_boxes(_black(), box, classes=[1], class_names=NAMES, font_size=12)
    b = draw_boxes(_black(), box, classes=[1], class_names=NAMES, scores=[0.5], font_size=12)
    c = draw_boxes(_black(), box, classes=[3], class_names=NAMES, scores=[0.5], font_size=12)
    assert (a != b).any() and (b != c).any()
    # Label of "circle 0.50" is wider than "circle": more label-colored pixels.
    col = np.array(class_color(1), np.uint8)
    assert (b[20:40] == col).all(-1).sum() > (a[20:40] == col).all(-1).sum()


def test_custom_colors_mapping_and_sequence():
    box = np.array([[40.0, 50.0, 100.0, 120.0]])
    out = draw_boxes(
        _black(), box, classes=[2], class_names=NAMES, colors={2: (10, 200, 30)}, line_width=1
    )
    np.testing.assert_array_equal(out[70, 50], [10, 200, 30])
    out = draw_boxes(
        _black(),
        box,
        classes=[3],
        class_names=NAMES,
        colors=[(1, 2, 3), (4, 5, 6), (255, 0, 0)],
        line_width=1,
    )
    np.testing.assert_array_equal(out[70, 50], [255, 0, 0])


def test_empty_and_out_of_image_boxes():
    img = np.full((50, 60, 3), 7, np.uint8)
    out = draw_boxes(
        img, np.zeros((0, 4), np.float32), classes=np.zeros((0,), np.int32), class_names=NAMES
    )
    np.testing.assert_array_equal(out, img)
    out = draw_boxes(img, np.array([[-20.0, -30.0, 200.0, 300.0]]), classes=[1], class_names=NAMES)
    assert out.shape == img.shape


def test_distinct_class_colors():
    colors = {class_color(i) for i in range(1, 81)}
    assert len(colors) == 80
    assert class_color(5) == class_color(5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes=[0]), r"class id 0 \(row 0\) is outside 1..3"),
        (dict(classes=[4]), r"class id 4"),
        (dict(classes=[1, 2]), r"classes has 2 entries"),
        (dict(classes=[1], scores=[0.1, 0.2]), r"scores has 2 entries"),
    ],
)
def test_bad_arguments_name_the_culprit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw_boxes(_black(), np.array([[1.0, 1.0, 5.0, 5.0]]), class_names=NAMES, **kwargs)


def test_bad_image_and_boxes():
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((5, 5, 3), np.float32), np.zeros((0, 4)), classes=[], class_names=NAMES)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        draw_boxes(_black(), np.zeros((2, 3)), classes=[1, 1], class_names=NAMES)
    with pytest.raises(ValueError, match="row 1 is not finite"):
        draw_boxes(
            _black(),
            np.array([[1.0, 1, 5, 5], [np.nan, 1, 5, 5]]),
            classes=[1, 1],
            class_names=NAMES,
        )


def test_make_grid_layout():
    a = np.full((10, 20, 3), 50, np.uint8)
    b = np.full((15, 5), 100, np.uint8)  # grayscale, different size
    c = np.full((4, 4, 3), 200, np.uint8)
    grid = make_grid([a, b, c], ncols=2, padding=1, pad_value=0)
    # cells 15 x 20, 2 columns, 2 rows
    assert grid.shape == (2 * 16 + 1, 2 * 21 + 1, 3)
    assert (grid[1:11, 1:21] == 50).all()
    assert (grid[1:16, 22:27] == 100).all() and not grid[1:16, 27:43].any()
    assert (grid[17:21, 1:5] == 200).all()
    assert not grid[11:16, 1:21].any()  # rest of cell 0 is pad
    assert make_grid([a], ncols=4, padding=0).shape == (10, 20, 3)


def test_make_grid_errors():
    with pytest.raises(ValueError, match="ncols must be >= 1, got 0"):
        make_grid([_black()], ncols=0)
    with pytest.raises(ValueError, match="empty"):
        make_grid([], ncols=1)
    with pytest.raises(ValueError, match=r"images\[1\] must be uint8"):
        make_grid([_black(), np.zeros((3, 3, 3), np.float32)], ncols=1)
