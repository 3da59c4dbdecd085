"""Image-file faults through the predict CLI (stand-in SavedModel) and the data sources: EXIF
orientation (issue 12 item 2), 16-bit PNGs (item 3), dangling symbolic links (item 7)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from fault_helpers import CLASSES, make_voc, snapshot, tiny_overrides
from helpers.fake_savedmodel import write_fake_export
from PIL import Image

from rfcn_tf import predict as predict_cli
from rfcn_tf.config import load_config
from rfcn_tf.data.pipeline import build_source

BOX = [0.25, 0.5, 0.75, 1.0]  # normalized yxyx the stand-in returns for every image


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "fake" / "1"
    return write_fake_export(str(folder), CLASSES, boxes=[BOX], scores=[0.9], classes=[1.0])


def _predict(export, out, *images):
    return predict_cli.main(
        ["--saved-model", export, "--out", str(out), "--no-progress", *map(str, images)]
    )


def _exif_jpeg(path, height, width, orientation):
    """A JPEG stored height x width whose EXIF says `orientation` (6: rotate 90 clockwise)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 4] = 250  # a bright top band: where it lands shows the rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def test_predict_applies_exif_orientation(export, tmp_path):
    photo = tmp_path / "rotated.jpg"
    _exif_jpeg(photo, 30, 50, 6)
    assert _predict(export, tmp_path / "out", photo) == 0
    record = json.loads((tmp_path / "out" / "detections.json").read_text())["images"][0]
    assert (record["height"], record["width"]) == (50, 30)  # as a photo viewer shows it
    box = record["detections"][0]["box_yxyx"]
    np.testing.assert_allclose(box, np.array(BOX) * [50, 30, 50, 30], atol=1e-3)


def test_training_follows_the_annotated_orientation(tmp_path):
    voc = make_voc(
        tmp_path / "voc",
        {
            "applied": (50, 30, [("cell", 2, 2, 20, 40)]),
            "stored": (30, 50, [("cell", 2, 2, 40, 20)]),
            "neither": (44, 44, [("cell", 2, 2, 20, 20)]),
        },
        {"train": ["applied", "stored"], "val": ["neither"]},
    )
    for name in ("applied", "stored", "neither"):
        (voc / "JPEGImages" / f"{name}.png").unlink()
        _exif_jpeg(voc / "JPEGImages" / f"{name}.jpg", 30, 50, 6)
        xml = voc / "Annotations" / f"{name}.xml"
        xml.write_text(xml.read_text().replace(f"{name}.png", f"{name}.jpg"))
    cfg = load_config("shapes_tiny", tiny_overrides(voc, tmp_path / "run")).data
    dataset, _ = build_source(cfg, split="train")
    applied, stored = list(dataset.as_numpy_iterator())
    assert applied["image"].shape == (50, 30, 3)  # annotated on the EXIF-applied image
    assert stored["image"].shape == (30, 50, 3)  # annotated on the stored pixels
    assert applied["image"][:, -5:].mean() > 200 and stored["image"][:5].mean() > 200
    dataset, _ = build_source(cfg, split="val")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"neither\.jpg"):
        list(dataset.as_numpy_iterator())


def test_predict_reads_16_bit_pngs_like_training(export, tmp_path):
    deep = np.full((24, 32), 20000, np.uint16)  # 20000 / 65535 * 255 = 77.8
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    assert _predict(export, tmp_path / "out", path) == 0
    drawn = np.asarray(Image.open(tmp_path / "out" / "deep.png").convert("RGB"))
    assert abs(int(drawn[1, 1, 0]) - 78) <= 1  # not 255 (PIL's I;16 -> RGB clips to white)


def test_dangling_link_in_a_folder_is_reported_and_the_rest_predicted(export, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "good.png")
    os.symlink(folder / "deleted.jpg", folder / "link.jpg")
    before = snapshot(folder)
    code = _predict(export, tmp_path / "out", folder)
    assert code == 1
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [os.path.basename(r["file"]) for r in report["images"]] == ["good.png"]
    (failed,) = report["failed"]
    assert failed["file"].endswith("link.jpg") and "dangling symbolic link" in failed["error"]
    assert snapshot(folder) == before
