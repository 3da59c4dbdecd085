"""Aspect-ratio grouping: padded-pixel fraction and images/s with and without, batch 4.

Two size mixes, each through the training pipeline (`build_dataset(..., training=True)`, no
cache) at batch 4:
  - BCCD-style: the real BCCD folder (every image 640x480, bccd.yaml's 480 px scale);
  - VOC-style: a VOC folder written to a temporary directory with VOC 2007's mix of image
    sizes (about 3/4 landscape 500x375 / 500x333, 1/4 portrait 375x500 / 333x500, a few
    others), R-FCN's 600 px scale (max 1000).
The padded-pixel fraction is 1 - (sum of the resized images' areas) / (B * padded area) over
the timed batches. The two variants are timed in interleaved windows in one process (medians),
so the machine's load affects both alike.

    python benchmarks/aspect_grouping.py [--images 96 --batches 8 --repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import tensorflow as tf
from PIL import Image

from rfcn_tf.config import load_config
from rfcn_tf.data.errors import DataError
from rfcn_tf.data.pipeline import build_dataset

# (height, width) -> share of VOC 2007 trainval images (rounded; the rest of the 500-px sizes
# folded into the nearest of these).
VOC_SIZES = {
    (375, 500): 0.55,
    (333, 500): 0.17,
    (500, 375): 0.14,
    (500, 333): 0.07,
    (400, 500): 0.04,
    (500, 400): 0.03,
}


def write_voc_mix(root: Path, num_images: int, seed: int = 0) -> Path:
    """A VOC folder of smooth random JPEGs with VOC's size mix and one box each."""
    rng = np.random.default_rng(seed)
    sizes = list(VOC_SIZES)
    picks = rng.choice(len(sizes), size=num_images, p=list(VOC_SIZES.values()))
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ids = []
    for i, pick in enumerate(picks):
        h, w = sizes[pick]
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)  # JPEG-friendly
        name = f"{i:06d}"
        image.save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><object><name>thing</name>"
            f"<difficult>0</difficult><bndbox><xmin>10</xmin><ymin>10</ymin>"
            f"<xmax>{w // 2}</xmax><ymax>{h // 2}</ymax></bndbox></object></annotation>"
        )
        ids.append(name)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def interleaved(variants: dict, *, batches: int, repeats: int, warmup: int = 3) -> dict:
    """{name: (median images/s, padded-pixel fraction)} timing the variants' windows in turn."""
    iterators = {name: iter(ds) for name, ds in variants.items()}
    for it in iterators.values():
        for _ in range(warmup):
            next(it)
    rates = {name: [] for name in variants}
    real = {name: 0.0 for name in variants}
    padded = {name: 0.0 for name in variants}
    for _ in range(repeats):
        for name, it in iterators.items():
            started = time.perf_counter()
            images = 0
            for _ in range(batches):
                f = next(it)
                shapes = f["image_shapes"].numpy().astype(np.float64)
                real[name] += float((shapes[:, 0] * shapes[:, 1]).sum())
                b, hp, wp = f["images"].shape[:3]
                padded[name] += float(b * hp * wp)
                images += b
            rates[name].append(images / (time.perf_counter() - started))
    return {
        name: (statistics.median(rates[name]), 1.0 - real[name] / padded[name]) for name in variants
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96, help="images in the VOC-style folder")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per variant (median)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    mixes = []
    bccd = load_config("bccd", ["data.cache=false"]).data
    mixes.append(("BCCD-style (BCCD trainval, all 640x480, 480 px)", bccd, bccd.train_split))
    tmp = tempfile.TemporaryDirectory(prefix="aspect_grouping_")
    voc_root = write_voc_mix(Path(tmp.name) / "voc", args.images)
    voc = load_config(
        "voc07_resnet101",
        [
            "data.source=voc",
            f"data.voc_root={voc_root}",
            "data.cache=false",
            "data.class_names=[thing]",
            "data.scales=[600]",
            "data.max_size=1000",
        ],
    ).data
    mixes.append((f"VOC-style ({args.images} images, VOC 2007 size mix, 600 px)", voc, "train"))

    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; batch {args.batch_size}; "
        f"medians of {args.repeats} interleaved windows of {args.batches} batches\n"
    )
    print("| size mix | grouping | padded pixels | images/s | images/s ratio on/off |")
    print("|---|---|---:|---:|---:|")
    for title, data_cfg, split in mixes:
        variants = {}
        try:
            for on in (False, True):
                cfg = dataclasses.replace(data_cfg, aspect_grouping=on)
                variants[on] = build_dataset(
                    cfg, split=split, training=True, batch_size=args.batch_size
                )
        except DataError as exc:
            print(f"| {title} | - | - | unavailable: {exc} | - |")
            continue
        result = interleaved(variants, batches=args.batches, repeats=args.repeats)
        ratio = result[True][0] / result[False][0]
        for on in (False, True):
            rate, fraction = result[on]
            print(
                f"| {title} | {'on' if on else 'off'} | {100 * fraction:.1f}% | {rate:.1f} | "
                f"{f'{ratio:.2f}' if on else ''} |",
                flush=True,
            )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
