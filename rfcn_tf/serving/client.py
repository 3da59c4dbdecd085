"""``python -m rfcn_tf.serving.client``: send images to a TF Serving model and print detections.

A thin CLI over ``rfcn_tf.serving.tf_serving_client`` (the REST and gRPC clients and the
response checks live there); this module parses, calls it and prints. Errors are one
``error:`` line through ``rfcn_tf.cli_args.run_cli`` (traceback with ``--debug``)::

    python -m rfcn_tf.serving.client IMAGE [IMAGE ...] --model rfcn \\
        [--url http://localhost:8501 | --grpc localhost:8500] [--version N] [--raw-pixels]
        [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rfcn_tf.cli_args import add_common_arguments, run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.serving.client",
        description="Send images to a TF Serving model exported by `python -m rfcn_tf.export` "
        "and print its detections (boxes in original-image pixels, yxyx).",
    )
    add = parser.add_argument
    add("images", nargs="+", metavar="IMAGE", help="image files (JPEG/PNG/GIF/BMP/WebP)")
    add("--model", default="rfcn", help="model name on the server (MODEL_NAME; default: rfcn)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument(
        "--url", default=None, help="REST root, e.g. http://localhost:8501 (the default transport)"
    )
    transport.add_argument(
        "--grpc",
        default=None,
        metavar="HOST:PORT",
        help="use gRPC at HOST:PORT instead of REST, e.g. localhost:8500",
    )
    add("--version", type=int, default=None, help="model version (default: the server's latest)")
    add(
        "--raw-pixels",
        action="store_true",
        help="decode here and send uint8 pixels to serving_default instead of "
        "the file's bytes to serving_encoded (large over REST)",
    )
    add("--labels", metavar="LABELS_TXT", help="the export's assets/labels.txt, for class names")
    add("--min-score", type=float, default=0.0, help="hide detections scoring below this")
    add(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="images per request (default 1); the batched signatures take N "
        "images at once (with --raw-pixels they must share one size)",
    )
    add("--timeout", type=float, default=60.0, help="seconds per request")
    add("--json", action="store_true", help="print one JSON object per image, not text lines")
    add_common_arguments(parser, progress=False)
    return parser


def _run(args: argparse.Namespace) -> int:
    from rfcn_tf.serving import tf_serving_client as serving

    try:
        names = serving.read_labels(args.labels) if args.labels else None
        if args.grpc:
            client = serving.GrpcClient(
                args.grpc, args.model, version=args.version, timeout=args.timeout
            )
        else:
            url = args.url or "http://localhost:8501"
            client = serving.RestClient(url, args.model, version=args.version, timeout=args.timeout)
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    client.num_classes = len(names) if names else None
    total, started = 0, time.perf_counter()
    with client:
        for first in range(0, len(args.images), args.batch_size):
            paths = args.images[first : first + args.batch_size]
            where = paths[0] if len(paths) == 1 else f"{paths[0]} (batch of {len(paths)})"
            try:
                images = [
                    serving.load_image(p) if args.raw_pixels else Path(p).read_bytes()
                    for p in paths
                ]
                tic = time.perf_counter()
                batch = client.detect_batch(images)
                seconds = time.perf_counter() - tic
            except (OSError, ValueError, serving.ServingError) as exc:
                print(f"error: {where}: {exc}", file=sys.stderr)
                return 1
            for path, dets in zip(paths, batch):
                total += _print_detections(path, dets, names, args, seconds / len(paths))
    transport_name = f"gRPC {args.grpc}" if args.grpc else f"REST {client.target}"
    print(
        f"{len(args.images)} image(s), {total} detection(s) scoring >= {args.min_score} "
        f"from {transport_name} in {time.perf_counter() - started:.2f} s",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0


def _print_detections(
    path: str, dets: dict, names: list[str] | None, args: argparse.Namespace, seconds: float
) -> int:
    """Prints one image's detections scoring >= --min-score; returns how many."""
    keep = dets["scores"] >= args.min_score
    rows = []
    for box, score, cls in zip(dets["boxes"][keep], dets["scores"][keep], dets["classes"][keep]):
        name = names[cls - 1] if names and 1 <= cls <= len(names) else str(int(cls))
        box_yxyx = [round(float(v), 1) for v in box]
        rows.append({"class": int(cls), "name": name, "score": float(score), "box_yxyx": box_yxyx})
    if args.json:
        print(json.dumps({"image": str(path), "seconds": round(seconds, 4), "detections": rows}))
    for row in [] if args.json else rows:
        box = " ".join(f"{v:.1f}" for v in row["box_yxyx"])
        print(f"{path}\t{row['name']}\t{row['score']:.3f}\t{box}")
    return len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
