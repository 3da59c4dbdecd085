"""THE image decoder: encoded bytes -> uint8 [H, W, 3] RGB, the same way on every path.

Training and evaluation (the folder sources' `read_image_or_flag` in
`rfcn_tf/data/sources/base.py`), the `Detector` API, the predict CLI and the serving graph's
encoded-image signature all decode with these functions, so an image gives the same pixels
everywhere:

- Pixels come from TensorFlow's decoder (`tf.io.decode_image`, `channels=3`, uint8, first
  frame of an animation): JPEG, PNG, GIF, BMP, WebP; grayscale and RGBA become RGB.
- 16-bit PNGs are mapped to uint8 by TensorFlow's dtype conversion (`v * 255 / 65535`, the
  mapping training has always used); PIL's `I;16 -> RGB` conversion clipped them to white.
- EXIF orientation (JPEG APP1 tag 0x0112) is parsed from the bytes with TF ops
  (`exif_orientation`, graph-safe: the serving graph traces it) and applied with
  `apply_orientation` (values 1..8 as the EXIF standard; other values count as 1).
  The rule (`orient_for_annotation`): an annotated image keeps the orientation its annotation
  was made in. The annotation's recorded size (VOC `<size>`, COCO `height`/`width`) is compared
  with the stored size and the EXIF-applied size: EXIF is applied when the EXIF-applied size
  matches, not applied when only the stored size matches, and the image is an error naming the
  file when neither matches. An annotation without a size (0, 0), and an image without an
  annotation (predict, the Detector, serving), gets EXIF applied: what a photo viewer shows.

`read_image(source)` is the eager entry point for Python callers: a path, encoded bytes, a
uint8 `[H, W, 3]` (or `[H, W]` gray) NumPy array or a PIL image -> a uint8 NumPy array, or an
`InputError` whose message names the input.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from rfcn_tf.errors import InputError
from rfcn_tf.inference.inputs import IMAGE_EXTENSIONS, expand_inputs

__all__ = [
    "IMAGE_EXTENSIONS",
    "apply_orientation",
    "decode_image",
    "exif_orientation",
    "expand_inputs",
    "orient_for_annotation",
    "read_image",
]


_ORIENTATION_TAG = 0x0112
_MAX_SEGMENTS = 32  # JPEG markers walked before giving up on finding APP1 (Exif)
_MAX_ENTRIES = 64  # IFD0 entries read
_PAD = b"\0" * (12 * _MAX_ENTRIES + 16)


def _bytes_at(data, length, offset, size):
    """uint8 [size] at `offset` of `data` (zero-padded past its end; never raises)."""
    pos = tf.clip_by_value(tf.cast(offset, tf.int64), 0, length)
    chunk = tf.strings.substr(data, pos, size)
    return tf.io.decode_raw(chunk, tf.uint8, fixed_length=size)


def _uint(raw, little):
    """Unsigned int of big- or little-endian uint8 bytes [n] -> int64 []."""
    raw = tf.cast(raw, tf.int64)
    n = raw.shape[0]
    little_weights = tf.constant([256**i for i in range(n)], tf.int64)
    big_weights = tf.constant([256 ** (n - 1 - i) for i in range(n)], tf.int64)
    return tf.where(little, tf.reduce_sum(raw * little_weights), tf.reduce_sum(raw * big_weights))


def exif_orientation(contents) -> tf.Tensor:
    """The EXIF orientation (1..8) of JPEG bytes; 1 when absent or not a JPEG. Never raises.

    Walks the JPEG markers from the start (at most 32) to the APP1 "Exif" segment, reads the
    TIFF header's byte order and IFD0, and returns the value of tag 0x0112 when present.

    Args:
        contents: string [] (the file's bytes).

    Returns:
        int32 [].
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    length = tf.cast(tf.strings.length(contents), tf.int64)
    data = tf.strings.join([contents, tf.constant(_PAD)])
    big = tf.constant(False)
    is_jpeg = tf.reduce_all(tf.equal(_bytes_at(data, length, 0, 2), [0xFF, 0xD8]))

    def read_ifd(tiff):
        little = tf.reduce_all(tf.equal(_bytes_at(data, length, tiff, 2), [0x49, 0x49]))
        ifd = tiff + _uint(_bytes_at(data, length, tiff + 4, 4), little)
        count = _uint(_bytes_at(data, length, ifd, 2), little)
        entries = tf.reshape(
            _bytes_at(data, length, ifd + 2, 12 * _MAX_ENTRIES), [_MAX_ENTRIES, 12]
        )
        entries = tf.cast(entries, tf.int64)
        tags = tf.where(
            little, entries[:, 0] + 256 * entries[:, 1], 256 * entries[:, 0] + entries[:, 1]
        )
        values = tf.where(
            little, entries[:, 8] + 256 * entries[:, 9], 256 * entries[:, 8] + entries[:, 9]
        )
        hit = (tags == _ORIENTATION_TAG) & (tf.range(_MAX_ENTRIES, dtype=tf.int64) < count)
        found = tf.reduce_any(hit)
        value = tf.reduce_max(tf.where(hit, values, 0))
        return tf.where(found, value, 1)

    def cond(i, offset, orientation, done):
        return (~done) & (i < _MAX_SEGMENTS) & (offset + 4 <= length)

    def body(i, offset, orientation, done):
        marker = _bytes_at(data, length, offset, 2)
        seg_len = _uint(_bytes_at(data, length, offset + 2, 2), big)
        is_marker = tf.equal(marker[0], 0xFF)
        stop = (~is_marker) | tf.equal(marker[1], 0xDA) | tf.equal(marker[1], 0xD9)
        exif_id = _bytes_at(data, length, offset + 4, 6)
        is_exif = (
            is_marker
            & tf.equal(marker[1], 0xE1)
            & tf.reduce_all(tf.equal(exif_id, [0x45, 0x78, 0x69, 0x66, 0, 0]))
        )
        value = tf.cond(is_exif, lambda: read_ifd(offset + 10), lambda: tf.constant(1, tf.int64))
        orientation = tf.where(is_exif, value, orientation)
        return i + 1, offset + 2 + seg_len, orientation, stop | is_exif | (seg_len < 2)

    _, _, orientation, _ = tf.while_loop(
        cond, body, [tf.constant(0), tf.constant(2, tf.int64), tf.constant(1, tf.int64), ~is_jpeg]
    )
    orientation = tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)
    return tf.cast(orientation, tf.int32)


def apply_orientation(image, orientation) -> tf.Tensor:
    """The image as EXIF orientation `orientation` says to display it.

    Args:
        image: [H, W, C] as stored. orientation: int []: 1 as stored, 2 mirrored left-right,
            3 rotated 180, 4 mirrored top-bottom, 5 transposed, 6 rotated 90 clockwise,
            7 transversed, 8 rotated 90 counter-clockwise; others as 1.

    Returns:
        [H', W', C] (H' = W for 5..8).
    """
    image = tf.convert_to_tensor(image)
    orientation = tf.cast(orientation, tf.int32)
    branches = [
        lambda: image,
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.reverse(image, [0]),
        lambda: tf.transpose(image, [1, 0, 2]),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(tf.transpose(image, [1, 0, 2]), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)
    out = tf.switch_case(index, branches)
    return tf.ensure_shape(out, [None, None, image.shape[-1]])


def _oriented_hw(hw, orientation):
    swap = tf.cast(orientation, tf.int32) >= 5
    return tf.where(swap, tf.reverse(hw, [0]), hw)


def orient_for_annotation(image, orientation, annotated_hw, *, filename="image", ok=True):
    """Applies the annotation rule of the module docstring.

    Args:
        image: uint8 [H, W, 3] as stored (decoded without orientation).
        orientation: int [] EXIF orientation of its file.
        annotated_hw: int [2] (height, width) the annotation records; (0, 0) or negative:
            unknown (EXIF is applied).
        filename: string [] naming the file in the error.
        ok: bool []: False skips the check (an image that failed to decode).

    Returns:
        uint8 [H', W', 3]. Raises (at run time) InvalidArgumentError starting with
        "DataError:" when neither the stored nor the EXIF-applied size matches.
    """
    image = tf.convert_to_tensor(image)
    hw = tf.cast(tf.shape(image)[:2], tf.int32)
    annotated = tf.cast(tf.reshape(annotated_hw, [2]), tf.int32)
    unknown = tf.reduce_any(annotated <= 0)
    rotated_hw = _oriented_hw(hw, orientation)
    exif_matches = tf.reduce_all(tf.equal(rotated_hw, annotated))
    stored_matches = tf.reduce_all(tf.equal(hw, annotated))
    check = tf.debugging.Assert(
        tf.logical_not(tf.cast(ok, tf.bool)) | unknown | exif_matches | stored_matches,
        [
            "DataError: image file",
            filename,
            "is (height, width)",
            hw,
            "stored and",
            rotated_hw,
            "with its EXIF orientation",
            orientation,
            "applied, but its annotation says",
            annotated,
            ": fix the annotation's size or the image",
        ],
        summarize=4,
    )
    with tf.control_dependencies([check]):
        apply = unknown | exif_matches
        return tf.cond(
            apply, lambda: apply_orientation(image, orientation), lambda: tf.identity(image)
        )


def decode_image(contents, *, apply_exif: bool = True) -> tf.Tensor:
    """Encoded image bytes -> uint8 [H, W, 3] RGB (module docstring). Graph-safe.

    Args:
        contents: string [] (JPEG, PNG, GIF, BMP or WebP file bytes).
        apply_exif: apply the JPEG's EXIF orientation (the rule for images without annotation).

    Raises:
        tf.errors.InvalidArgumentError: bytes that are not an image of these formats.
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.ensure_shape(image, [None, None, 3])
    if apply_exif:
        image = apply_orientation(image, exif_orientation(contents))
    return image


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = type(source).__name__
    shape = getattr(source, "shape", None)
    return f"{name} {tuple(shape)}" if shape is not None else name


def read_image(source: Any, *, apply_exif: bool = True):
    """One image for the Python API -> uint8 NumPy array [H, W, 3] (H, W >= 1).

    Args:
        source: a file path (str or PathLike), encoded bytes, a NumPy array (uint8 [H, W, 3],
            [H, W] or [H, W, 1] gray, [H, W, 4] RGBA: alpha dropped) or a PIL image
            (converted to RGB; PIL images are already decoded, so no EXIF is applied to them).
        apply_exif: for paths and bytes: apply the EXIF orientation (predict's rule).

    Raises:
        InputError: missing or unreadable file, bytes that are no image, wrong dtype or rank,
            empty image; the message names the input.
    """
    import numpy as np

    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.islink(path) and not os.path.exists(path):
            raise InputError(
                f"cannot read image {path}: dangling symbolic link to {os.readlink(path)}"
            )
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InputError(f"cannot read image {name}: the file is empty (0 bytes)")
        try:
            array = decode_image(bytes(source), apply_exif=apply_exif).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            reason = exc.message.splitlines()[0] if exc.message else type(exc).__name__
            raise InputError(
                f"cannot decode image {name}: not a readable JPEG, PNG, GIF, BMP "
                f"or WebP file (first bytes {bytes(source[:8])!r}; {reason})"
            ) from None
    elif type(source).__module__.startswith("PIL."):
        array = np.asarray(source.convert("RGB"), np.uint8)
    else:
        try:
            array = np.asarray(source)
        except Exception as exc:  # an object NumPy cannot read
            raise InputError(f"cannot use {name} as an image: {exc}") from None
        if array.dtype != np.uint8:
            raise InputError(
                f"image {name} has dtype {array.dtype}: need uint8 [H, W, 3] RGB "
                "(convert with (x * 255).round().astype(np.uint8) for [0, 1] "
                "floats)"
            )
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise InputError(
                f"image {name} has shape {array.shape}: need [H, W, 3] RGB (or [H, W] gray)"
            )
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        elif array.shape[-1] == 4:
            array = array[:, :, :3]
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"image {name} is empty: shape {array.shape}")
    return np.ascontiguousarray(array)
