"""The one image decoder (rfcn_tf/images.py): EXIF orientation, 16-bit PNGs, bad input."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from rfcn_tf.errors import InputError, RfcnError
from rfcn_tf.images import (
    apply_orientation,
    decode_image,
    exif_orientation,
    orient_for_annotation,
    read_image,
)

_PIL_TRANSPOSE = {
    2: Image.FLIP_LEFT_RIGHT,
    3: Image.ROTATE_180,
    4: Image.FLIP_TOP_BOTTOM,
    5: Image.TRANSPOSE,
    6: Image.ROTATE_270,
    7: Image.TRANSVERSE,
    8: Image.ROTATE_90,
}


def _jpeg(array, orientation=None, little_endian=False):
    image = Image.fromarray(array)
    buf = io.BytesIO()
    if orientation is None:
        image.save(buf, "JPEG", quality=95)
    else:
        exif = image.getexif()
        exif[0x0112] = orientation
        data = exif.tobytes(0x4949 if little_endian else 0x4D4D)  # PIL: "II" or "MM"
        image.save(buf, "JPEG", quality=95, exif=data)
    return buf.getvalue()


ARRAY = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_parsed_and_applied_like_pil(orientation):
    data = _jpeg(ARRAY, orientation)
    assert int(exif_orientation(data)) == orientation
    stored = decode_image(data, apply_exif=False).numpy()
    assert stored.shape == (40, 60, 3)
    expected = (
        stored
        if orientation == 1
        else np.asarray(Image.fromarray(stored).transpose(_PIL_TRANSPOSE[orientation]))
    )
    np.testing.assert_array_equal(decode_image(data).numpy(), expected)
    # PIL's own EXIF handling agrees up to the two JPEG decoders' rounding
    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert pil.shape == expected.shape
    assert np.abs(pil.astype(int) - expected).mean() < 3


def test_exif_orientation_without_exif_or_not_jpeg():
    assert int(exif_orientation(_jpeg(ARRAY))) == 1
    assert int(exif_orientation(b"")) == 1
    assert int(exif_orientation(b"\xff\xd8\xff\xe1\x00")) == 1  # truncated APP1
    assert int(exif_orientation(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)) == 1
    assert int(exif_orientation(_jpeg(ARRAY, 6, little_endian=True))) == 6


def test_decoder_is_graph_safe():
    fn = tf.function(decode_image, input_signature=[tf.TensorSpec([], tf.string)])
    assert fn(tf.constant(_jpeg(ARRAY, 6))).shape == (60, 40, 3)


def test_annotation_rule_exif_stored_and_neither():
    data = _jpeg(ARRAY, 6)
    stored = decode_image(data, apply_exif=False)
    rotated = decode_image(data).numpy()
    o = exif_orientation(data)
    # annotation made on the upright (EXIF-applied) image: 60 x 40
    np.testing.assert_array_equal(orient_for_annotation(stored, o, [60, 40]).numpy(), rotated)
    # annotation made on the stored pixels: 40 x 60, kept as stored
    np.testing.assert_array_equal(
        orient_for_annotation(stored, o, [40, 60]).numpy(), stored.numpy()
    )
    # unknown size: EXIF applied
    assert orient_for_annotation(stored, o, [0, 0]).shape == (60, 40, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)DataError: image file.*a.jpg"):
        orient_for_annotation(stored, o, [50, 50], filename="a.jpg")
    assert apply_orientation(stored, 9).shape == (40, 60, 3)  # invalid value: as stored


def test_16_bit_png_maps_like_training_not_white(tmp_path):
    values = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(str(path))
    assert image.dtype == np.uint8 and image.shape == (40, 60, 3)
    # TF's uint16 -> uint8 conversion (what the training pipeline has always used): v >> 8
    np.testing.assert_array_equal(image[..., 0], (values >> 8).astype(np.uint8))
    assert image.mean() < 200  # PIL's I;16 -> RGB clip gave all white (255)


def test_read_image_sources_and_errors(tmp_path):
    path = tmp_path / "rot.jpg"
    path.write_bytes(_jpeg(ARRAY, 6))
    assert read_image(path).shape == (60, 40, 3)  # predict applies EXIF
    assert read_image(ARRAY).shape == (40, 60, 3)
    assert read_image(Image.fromarray(ARRAY)).shape == (40, 60, 3)
    assert read_image(ARRAY[..., 0]).shape == (40, 60, 3)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    cases = [
        (tmp_path / "missing.jpg", "missing.jpg"),
        (tmp_path / "empty.png", "empty"),
        (tmp_path / "text.jpg", "text.jpg"),
        (tmp_path / "dangling.jpg", "dangling"),
        (ARRAY.astype(np.float32), "float32"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    ]
    for source, words in cases:
        with pytest.raises(InputError, match=words) as info:
            read_image(source)
        assert isinstance(info.value, RfcnError)


def _voc_folder(root, images):
    """A VOC folder of {id: (jpeg bytes, annotated (h, w), box (xmin, ymin, xmax, ymax))}."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (data, (h, w), box) in images.items():
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(data)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><object><name>thing</name>"
            f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>"
            f"<ymax>{box[3]}</ymax></bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(images) + "\n")


def test_voc_training_pixels_follow_the_annotation_orientation(tmp_path):
    from rfcn_tf.data.sources.voc_xml import voc_source

    data = _jpeg(ARRAY, 6)  # stored 40 x 60, displayed 60 x 40
    # "upright": annotated on the displayed image (60 high, 40 wide); "stored": on the pixels
    _voc_folder(
        tmp_path / "voc",
        {"upright": (data, (60, 40), (1, 1, 20, 30)), "stored": (data, (40, 60), (1, 1, 30, 20))},
    )
    dataset, _ = voc_source(tmp_path / "voc", split="train", class_names=["thing"])
    examples = {ex["filename"].numpy().decode().split("/")[-1]: ex for ex in dataset}
    upright, stored = examples["upright.jpg"], examples["stored.jpg"]
    np.testing.assert_array_equal(upright["image"].numpy(), decode_image(data).numpy())
    np.testing.assert_array_equal(
        stored["image"].numpy(), decode_image(data, apply_exif=False).numpy()
    )
    np.testing.assert_allclose(upright["boxes"].numpy(), [[0, 0, 30 / 60, 20 / 40]])
    np.testing.assert_allclose(stored["boxes"].numpy(), [[0, 0, 20 / 40, 30 / 60]])


def test_voc_image_matching_neither_orientation_is_an_error_naming_it(tmp_path):
    from rfcn_tf.data.sources.voc_xml import voc_source

    _voc_folder(tmp_path / "voc", {"odd": (_jpeg(ARRAY, 6), (50, 50), (1, 1, 20, 20))})
    dataset, _ = voc_source(tmp_path / "voc", split="train", class_names=["thing"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)DataError: image file.*odd.jpg"):
        list(dataset)


def test_expand_inputs_reports_dangling_links_instead_of_skipping_them(tmp_path):
    from rfcn_tf.inference.inputs import expand_inputs

    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "named.jpg").symlink_to(tmp_path / "also_deleted.jpg")
    paths, failed = expand_inputs([str(folder), str(tmp_path / "named.jpg")])
    assert paths == [str(folder / "a.png"), str(folder / "gone.jpg")]  # reading reports it
    assert failed == [
        {
            "file": str(tmp_path / "named.jpg"),
            "error": f"dangling symbolic link to {tmp_path / 'also_deleted.jpg'}",
        }
    ]
    with pytest.raises(InputError, match="gone.jpg: dangling symbolic link"):
        read_image(paths[1])
