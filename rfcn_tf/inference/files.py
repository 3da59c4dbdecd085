"""Prediction over image files (what ``python -m rfcn_tf.predict`` runs): each image decoded by
the one decoder (rfcn_tf/images.py), detected through a Detector and drawn to a PNG; the
records it returns hold ``box_yxyx`` pixels of the ORIGINAL image.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rfcn_tf.errors import InputError

__all__ = ["predict_files"]


def _output_path(out_dir: str, path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, index = f"{stem}.png", 1
    while name in used:
        name, index = f"{stem}_{index}.png", index + 1
    used.add(name)
    return os.path.join(out_dir, name)


def predict_files(
    detector,
    paths,
    out_dir: str,
    *,
    failed: list[dict[str, str]],
    score_threshold: float,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """Runs `detector` on every file of `paths`, writes `<out_dir>/<stem>.png` with the boxes
    drawn.

    A file that cannot be read or detected is appended to `failed` (``{"file", "error"}``), its
    error printed as one line, and the others go on.

    Returns:
        (records of the processed images, total number of detections).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from rfcn_tf.cli_args import error_line
    from rfcn_tf.images import read_image

    os.makedirs(out_dir, exist_ok=True)
    used: set[str] = set()
    records, total = [], 0
    for path in tqdm(
        paths, unit="img", desc="predict", disable=not progress, file=sys.stderr, dynamic_ncols=True
    ):
        try:
            image = read_image(path)
            result = detector.predict(image, box_format="yxyx")
        except Exception as exc:  # this image fails; the others go on
            message = (
                str(exc)
                if isinstance(exc, InputError)
                else f"detection failed on {path}: {error_line(exc)}"
            )
            failed.append({"file": path, "error": message})
            print(f"error: {message}", file=sys.stderr)
            continue
        out_path = _output_path(out_dir, path, used)
        Image.fromarray(result.draw(image)).save(out_path)
        total += len(result)
        records.append(
            {
                "file": path,
                "output": out_path,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "detections": [
                    {
                        "box_yxyx": d["box"],
                        "score": d["score"],
                        "class_id": d["class_id"],
                        "class_name": d["class_name"],
                    }
                    for d in result.to_dict()["detections"]
                ],
            }
        )
    with open(os.path.join(out_dir, "detections.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": detector.info,
                "score_threshold": score_threshold,
                "class_names": detector.class_names,
                "images": records,
                "failed": failed,
            },
            f,
            indent=1,
        )
    return records, total
