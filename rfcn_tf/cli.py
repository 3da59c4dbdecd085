"""The `rfcn-tf` console script: `rfcn-tf train|evaluate|predict|export|inspect|client ...`.

Each command runs the same tool (same flags) as `python -m <module>`; `rfcn-tf --help` lists
them without importing TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# command -> (module whose main(argv) runs it, one line of help)
COMMANDS = {
    "train": ("rfcn_tf.train", "train a detector, then evaluate and export it"),
    "evaluate": ("rfcn_tf.evaluate", "COCO / VOC metrics of a checkpoint or SavedModel"),
    "predict": ("rfcn_tf.predict", "detect objects in image files, draw and save them"),
    "export": ("rfcn_tf.export.__main__", "write a SavedModel (and ONNX / TF-TRT)"),
    "inspect": ("rfcn_tf.data.inspect", "check a dataset and draw its annotations"),
    "client": ("rfcn_tf.serving.client", "query a TF Serving server"),
}


def _usage() -> str:
    lines = [
        "usage: rfcn-tf COMMAND [ARGS...]   (rfcn-tf COMMAND --help for its flags)",
        "",
        "R-FCN object detection for TensorFlow 2 / Keras 3.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit status (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from rfcn_tf import __version__

        print(f"rfcn-tf {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{_usage()}\n\nerror: unknown command {command!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"rfcn-tf {command}"
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
