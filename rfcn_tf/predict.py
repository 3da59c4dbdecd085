"""Detect objects in image files: ``python -m rfcn_tf.predict IMAGES... --out DIR``.

Each input image is written to ``--out`` as ``<name>.png`` with its detections drawn (box, class
name, score; `rfcn_tf.visualization.draw_boxes`), and all detections go to
``--out/detections.json``. Inputs may be files, folders (their image files, not recursive) and
glob patterns (``"data/*.jpg"``, ``"data/**/*.png"``, quoted so the shell leaves them to us).

Model sources (as `rfcn_tf.evaluate`): ``--checkpoint`` (model built from the config: the run's
saved ``config.yaml`` when --config is not given; images resized like evaluation: shorter side
the median of ``data.scales``, longer side <= ``data.max_size``; class names from
``data.class_names``, else the run's ``classes.txt``, else the dataset) or ``--saved-model`` (the export's
``serving_default`` signature, which resizes inside; class names from its ``labels.txt``).

An unreadable or missing image is reported by name on stderr and in detections.json's
"failed" list; the other images are still processed, and the exit status is 1 at the end.

detections.json::

    {"model": {...}, "score_threshold": 0.5, "class_names": [...],
     "images": [{"file", "output", "height", "width",
                 "detections": [{"box_yxyx": [y1, x1, y2, x2] ORIGINAL-image pixels,
                                 "score", "class_id" (1..C), "class_name"}]}],
     "failed": [{"file", "error"}]}
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rfcn_tf.cli_args import add_config_arguments, add_model_source_arguments
from rfcn_tf.evaluate import CLIError

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "read_image", "main"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GLOB_CHARS = set("*?[")


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Files, folders and glob patterns -> image paths (input order, duplicates removed).

    Args:
        inputs: command-line arguments. A folder contributes its files with an image extension
            (`IMAGE_EXTENSIONS`, case-insensitive), sorted, not recursive; a pattern with
            `*`, `?` or `[` is expanded with `glob` (`**` recursive), sorted; a plain path is
            taken as is (whatever its extension: reading decides).

    Returns:
        `(paths, failed)`: `failed` lists `{"file", "error"}` for missing paths, patterns without
        match and folders without images.
    """
    paths: list[str] = []
    failed: list[dict] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, name)))
            if not found:
                failed.append({"file": item, "error": "folder holds no image file "
                               f"({', '.join(IMAGE_EXTENSIONS)})"})
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        elif _GLOB_CHARS & set(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                failed.append({"file": item, "error": "no file matches this pattern"})
            paths.extend(found)
        else:
            failed.append({"file": item, "error": "no such file or folder"})
    unique = list(dict.fromkeys(paths))
    return unique, failed


def read_image(path: str):
    """uint8 `[H, W, 3]` RGB NumPy array of an image file (first frame of an animation).

    Raises:
        CLIError: the file cannot be opened or decoded (message names the file and why).
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CLIError(f"cannot read image {path}: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise CLIError(f"cannot read image {path}: it is empty ({array.shape})")
    return array


def _output_path(out_dir: str, path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name = f"{stem}.png"
    index = 1
    while name in used:
        name = f"{stem}_{index}.png"
        index += 1
    used.add(name)
    return os.path.join(out_dir, name)


class _CheckpointPredictor:
    """Single-scale inference of a restored checkpoint on one original image."""

    def __init__(self, cfg, checkpoint: str, class_names: list[str], desc: str):
        from rfcn_tf.evaluate import load_checkpoint_detector

        self.model, self.prefix = load_checkpoint_detector(
            cfg, checkpoint, num_classes=len(class_names), dataset_desc=desc)
        from rfcn_tf.data.pipeline import evaluation_scale

        self.min_size = int(evaluation_scale(cfg.data.scales))  # as evaluation resizes
        self.max_size = int(cfg.data.max_size)
        self.multiple = int(cfg.model.backbone.feature_stride)

    def __call__(self, image) -> dict[str, Any]:
        import numpy as np
        import tensorflow as tf

        from rfcn_tf.data.transforms import pad_to_multiple, resize_image
        from rfcn_tf.evaluation.evaluator import to_original_pixels

        resized, _ = resize_image(tf.convert_to_tensor(image), min_size=self.min_size,
                                  max_size=self.max_size)
        h, w = int(resized.shape[0]), int(resized.shape[1])
        padded = pad_to_multiple(resized, multiple=self.multiple)
        out = self.model.detect(padded[None], tf.constant([[h, w]], tf.int32))
        n = int(out["num_detections"][0])
        return {
            "boxes": to_original_pixels(out["detection_boxes"][0, :n].numpy(), (h, w),
                                        image.shape[:2]),
            "scores": out["detection_scores"][0, :n].numpy().astype(np.float64),
            "classes": out["detection_classes"][0, :n].numpy().astype(np.int64),
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.predict",
        description=("Run an R-FCN detector on image files; write each image with its boxes, "
                     "class names and scores drawn (<out>/<name>.png) and every detection to "
                     "<out>/detections.json (boxes yxyx in original-image pixels)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n"
                "  python -m rfcn_tf.predict photo.jpg more/ 'shots/*.png' "
                "--checkpoint runs/shapes_tiny/checkpoints --out predictions\n"
                "  python -m rfcn_tf.predict img.jpg --saved-model export/rfcn --out pred "
                "--score-threshold 0.3\n"
                "exit status: 0 when every image was processed, 1 otherwise (unreadable "
                "images are reported by name and skipped)"))
    parser.add_argument(
        "images", nargs="+", metavar="IMAGES",
        help=("image files, folders (their image files, not recursive) or quoted glob "
              "patterns such as 'data/*.jpg' ('**' recurses)"))
    add_model_source_arguments(parser, saved_model_note="; class names from labels.txt")
    add_config_arguments(
        parser, set_example="data.scales=[800]",
        config_help=("used with --checkpoint (model, input size, class names); default: the "
                     "run's config.yaml next to the checkpoint, else shapes_tiny"))
    parser.add_argument(
        "--out", required=True, metavar="DIR",
        help="output folder (created): annotated images and detections.json")
    parser.add_argument(
        "--score-threshold", type=float, default=0.5, metavar="S",
        help="draw and save only detections scoring at least S, in [0, 1] (default: 0.5)")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (drawn on stderr)")
    return parser


def _class_names_for(cfg, checkpoint: str) -> tuple[list[str], str]:
    """Class names for a checkpoint: `data.class_names`, else the run's `classes.txt` (written
    by training beside config.yaml), else the dataset source's."""
    from rfcn_tf.evaluate import find_run_file

    if cfg.data.class_names:
        return list(cfg.data.class_names), "data.class_names"
    saved = find_run_file(checkpoint, "classes.txt")
    if saved is not None:
        with open(saved, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
        if names:
            return names, saved
    from rfcn_tf.data.pipeline import build_source

    split = cfg.data.val_split
    try:
        _, info = build_source(cfg.data, split=split)
    except Exception as exc:  # the dataset may be absent where we only predict
        raise CLIError(
            f"cannot learn the class names from the dataset ({cfg.data.source}, split "
            f"'{split}'): {exc}; set them with --set 'data.class_names=[a, b, ...]'") from None
    return list(info.class_names), f"the dataset ({cfg.data.source}, split '{split}')"


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from tqdm.auto import tqdm

    from rfcn_tf.evaluate import SavedModelDetector, resolve_config
    from rfcn_tf.visualization import draw_boxes

    if not 0.0 <= args.score_threshold <= 1.0:
        raise CLIError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    paths, failed = expand_inputs(args.images)
    for item in failed:
        print(f"error: {item['file']}: {item['error']}", file=sys.stderr)
    if not paths:
        raise CLIError(f"no image to process among {list(args.images)}")

    if args.checkpoint:
        cfg, config_source = resolve_config(args.config, args.overrides,
                                            checkpoint=args.checkpoint)
        class_names, names_from = _class_names_for(cfg, args.checkpoint)
        predictor = _CheckpointPredictor(cfg, args.checkpoint, class_names, names_from)
        model_info = {"checkpoint": predictor.prefix, "config": config_source}
        detect = predictor
    else:
        if args.config or args.overrides:
            print("note: --config/--set are not used with --saved-model (the export carries "
                  "its preprocessing and class names)", file=sys.stderr)
        saved = SavedModelDetector(args.saved_model)
        class_names = saved.class_names
        model_info = {"saved_model": saved.path}
        detect = saved.detect_image

    os.makedirs(args.out, exist_ok=True)
    used: set[str] = set()
    records = []
    total_dets = 0
    for path in tqdm(paths, unit="img", desc="predict", disable=args.no_progress,
                     file=sys.stderr, dynamic_ncols=True):
        try:
            image = read_image(path)
            det = detect(image)
        except CLIError as exc:
            failed.append({"file": path, "error": str(exc)})
            print(f"error: {exc}", file=sys.stderr)
            continue
        except tf.errors.OpError as exc:  # e.g. the export rejecting this image
            message = f"detection failed on {path}: {exc.message.splitlines()[0]}"
            failed.append({"file": path, "error": message})
            print(f"error: {message}", file=sys.stderr)
            continue
        keep = det["scores"] >= args.score_threshold
        boxes, scores, classes = det["boxes"][keep], det["scores"][keep], det["classes"][keep]
        bad = classes[(classes < 1) | (classes > len(class_names))]
        if bad.size:
            raise CLIError(f"the model returned class id {int(bad[0])} outside 1.."
                           f"{len(class_names)} (class names: {class_names})")
        order = np.argsort(scores, kind="stable")  # best drawn last, on top
        drawn = draw_boxes(image, boxes[order], classes=classes[order],
                           class_names=class_names, scores=scores[order])
        out_path = _output_path(args.out, path, used)
        Image.fromarray(drawn).save(out_path)
        total_dets += int(keep.sum())
        records.append({
            "file": path,
            "output": out_path,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "detections": [
                {"box_yxyx": [float(v) for v in boxes[i]], "score": float(scores[i]),
                 "class_id": int(classes[i]), "class_name": class_names[int(classes[i]) - 1]}
                for i in range(boxes.shape[0])
            ],
        })
    with open(os.path.join(args.out, "detections.json"), "w", encoding="utf-8") as f:
        json.dump({"model": model_info, "score_threshold": args.score_threshold,
                   "class_names": class_names, "images": records, "failed": failed}, f, indent=1)
    status = "" if not failed else f" ({len(failed)} failed: {', '.join(x['file'] for x in failed)})"
    print(f"predicted {len(records)} images{status}, {total_dets} detections with score >= "
          f"{args.score_threshold:g} -> {args.out}", flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0: every image processed, 1 otherwise)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rfcn_tf.config import ConfigError
    from rfcn_tf.data.errors import DataError

    try:
        return _run(args)
    except (CLIError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; RFCN_TRACEBACK=1 shows the traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("RFCN_TRACEBACK"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
