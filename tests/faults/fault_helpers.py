"""Builders of bad input for the fault suite (tiny VOC folders, configs, file snapshots)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["cell", "dot"]


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """VOC annotation text; objects are (name, xmin, ymin, xmax, ymax)."""
    parts = [
        f"<annotation><filename>{filename}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def grid_boxes(count: int, *, size: int, cell: int = 6):
    """`count` non-overlapping (name, xmin, ymin, xmax, ymax) boxes in a size x size image."""
    per_row = size // cell
    assert count <= per_row * per_row
    return [
        (
            CLASSES[i % 2],
            1 + (i % per_row) * cell,
            1 + (i // per_row) * cell,
            (i % per_row) * cell + cell - 1,
            (i // per_row) * cell + cell - 1,
        )
        for i in range(count)
    ]


def make_voc(root: Path, images: dict, splits: dict) -> Path:
    """A VOC folder. images: id -> (height, width, objects); splits: name -> [ids]."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, (h, w, objects) in images.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            voc_xml(f"{image_id}.png", w, h, objects)
        )
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def small_voc(root: Path) -> Path:
    """Four 48x48 images with 1-3 boxes each; splits train (all) and val (two)."""
    images = {f"im{i}": (48, 48, grid_boxes(1 + i % 3, size=48, cell=16)) for i in range(4)}
    return make_voc(root, images, {"train": list(images), "val": ["im0", "im1"]})


def tiny_overrides(voc_root: Path, work_dir: Path, **extra) -> list[str]:
    """`--set` values over the shapes_tiny preset (its small model) for a VOC folder of 48 px
    images: two steps, a checkpoint every step, nothing evaluated or exported at the end.
    `extra` (dotted keys with "__" for ".") adds or replaces values."""
    values = {
        "data.source": "voc",
        "data.voc_root": str(voc_root),
        "data.train_split": "train",
        "data.val_split": "val",
        "data.class_names": "[" + ",".join(CLASSES) + "]",
        "data.scales": "[48]",
        "data.max_size": 64,
        "data.max_boxes": 4,
        "data.random_flip": "false",
        "data.deterministic": "true",
        "data.num_parallel_calls": 1,
        "train.steps": 2,
        "train.batch_size": 1,
        "train.warmup_steps": 0,
        "train.checkpoint_every": 1,
        "train.log_every": 1,
        "train.work_dir": str(work_dir),
        "train.evaluate_at_end": "false",
        "train.export_at_end": "false",
        "train.num_summary_images": 0,
        "eval.batch_size": 1,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def set_args(overrides: list[str]) -> list[str]:
    """["--set", o1, "--set", o2, ...]."""
    return [a for o in overrides for a in ("--set", o)]


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (to assert inputs are untouched); a
    symbolic link records its target instead."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            full = os.path.join(folder, name)
            if os.path.islink(full):
                out[os.path.relpath(full, root)] = "-> " + os.readlink(full)
                continue
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = hashlib.sha256(f.read()).hexdigest()
    return out
