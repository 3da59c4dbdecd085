"""Helpers for the data tests: small VOC folders and COCO files written into tmp_path.

Images are written with Pillow as PNG (lossless, so pixel checks are exact) or JPEG; broken
files are made on purpose (a truncated JPEG, a text file named .jpg). The shared BCCD folder
(../shared/data/BCCD) is never modified.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from rfcn_tf.config import DataConfig, ShapesConfig


def random_pixels(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3] random RGB, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path: Path, height: int, width: int, *, seed: int = 0, fmt: str = "PNG"):
    """A random RGB image (`random_pixels`) saved at `path`; returns the pixels."""
    pixels = random_pixels(height, width, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


def truncated_jpeg(path: Path, *, seed: int = 0):
    """A JPEG cut in the middle of its entropy-coded data (libjpeg: premature end of data)."""
    write_image(path, 64, 80, seed=seed, fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def text_as_jpeg(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """VOC annotation text; objects are (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = [
        f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


# The default VOC fixture: id -> (height, width, objects). img_c has no objects (a negative);
# extra is in no split but its class "zebra" must still be discovered.
VOC_IMAGES = {
    "img_a": (40, 60, [("dog", 11, 5, 30, 20, 0), ("cat", 1, 1, 60, 40, 1)]),
    "img_b": (50, 30, [("cat", 3, 4, 20, 44, 0)]),
    "img_c": (32, 32, []),
    "img_d": (
        36,
        48,
        [("dog", 5, 6, 25, 30, 0), ("dog", 8, 8, 8, 20, 0), ("cat", 40, 30, 60, 45, 0)],
    ),
    "extra": (20, 20, [("zebra", 2, 2, 10, 10, 0)]),
}
VOC_SPLITS = {"train": ["img_a", "img_b", "img_c", "img_d"], "val": ["img_b", "img_d"]}


def make_voc(root: Path, images=None, splits=None, *, ext: str = "png") -> Path:
    """Writes a VOC folder (Annotations, JPEGImages, ImageSets/Main) and returns its root."""
    images = VOC_IMAGES if images is None else images
    splits = VOC_SPLITS if splits is None else splits
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for i, (image_id, (h, w, objects)) in enumerate(images.items()):
        filename = f"{image_id}.{ext}"
        write_image(root / "JPEGImages" / filename, h, w, seed=i)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(filename, w, h, objects))
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def make_coco(root: Path, *, images, annotations, categories, split: str = "train") -> tuple:
    """Writes `root/annotations/instances_<split>.json` and `root/<split>/<file>` images.

    images: list of (id, file_name, height, width); annotations: list of dicts with
    image_id, category_id, bbox (xywh), iscrowd. Returns (json template, images template) with
    `{split}` placeholders.
    """
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, (image_id, file_name, h, w) in enumerate(images):
        write_image(root / split / file_name, h, w, seed=100 + i)
    anns = [
        dict(id=i + 1, area=a["bbox"][2] * a["bbox"][3], **a) for i, a in enumerate(annotations)
    ]
    data = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
        "annotations": anns,
        "categories": [{"id": cid, "name": name, "supercategory": "x"} for cid, name in categories],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return str(root / "annotations" / "instances_{split}.json"), str(root / "{split}")


def data_config(**fields) -> DataConfig:
    """A DataConfig with test-friendly defaults (deterministic, no threads racing on order)."""
    shapes = fields.pop("shapes", None)
    cfg = DataConfig(deterministic=True, **fields)
    if shapes is not None:
        cfg = dataclasses.replace(
            cfg, shapes=shapes if isinstance(shapes, ShapesConfig) else ShapesConfig(**shapes)
        )
    return cfg
