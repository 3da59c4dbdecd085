"""Command-line arguments and the error policy shared by the rfcn_tf CLIs.

Every tool (train, evaluate, predict, export, inspect, client) parses with these helpers and
runs its work through `run_cli`: ANY exception becomes one line `error: <message>` on stderr
and exit status 1 (130 on Ctrl-C); `--debug` (or RFCN_TRACEBACK=1) shows the traceback
instead. This module imports no TensorFlow, so `--help` is fast and prints no TF log lines.

Consistent flags: `--config`/`--set`/`--print-config` on every tool that reads a config,
`--no-progress` on every tool with a progress bar, `--score-threshold` the one name of the
score threshold, `--out` a folder for tools that write several files, `--debug` everywhere.

Every CLI reads its config the same way (`--config NAME_OR_YAML`, repeatable `--set KEY=VALUE`
into `args.overrides`) and the inference CLIs choose their model the same way (`--checkpoint` or
`--saved-model`); defining the flags once keeps their names, destinations and defaults identical
across commands. Each CLI passes the part of the help text that is its own (what its default
config is, an example override).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "add_common_arguments",
    "add_config_arguments",
    "add_model_source_arguments",
    "add_score_threshold_argument",
    "error_line",
    "run_cli",
]


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    config_help: str,
    set_example: str,
    print_config: bool = False,
) -> None:
    """Adds `--config` (dest `config`, default None), `--set` (dest `overrides`, a list) and,
    with `print_config=True`, `--print-config` (the tool prints the resolved, validated config
    as YAML and exits: it must handle `args.print_config`).

    Args:
        parser: the CLI's parser (or argument group).
        config_help: what this CLI does without `--config` and anything else about it, appended
            to "config preset name (configs/<name>.yaml) or path to a YAML file; ".
        set_example: one override this CLI's users are likely to need, e.g. "train.lr=0.01".
    """
    parser.add_argument(
        "--config",
        default=None,
        metavar="NAME_OR_YAML",
        help=f"config preset name (configs/<name>.yaml) or path to a YAML file; {config_help}",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            f"override one config value, e.g. --set {set_example} "
            "(repeatable; values are parsed as YAML)"
        ),
    )
    if print_config:
        parser.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config as YAML (validated) and exit",
        )


def add_common_arguments(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """Adds `--no-progress` (when the tool draws a progress bar) and `--debug`."""
    if progress:
        parser.add_argument(
            "--no-progress", action="store_true", help="hide the progress bar (drawn on stderr)"
        )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error (default: one line)",
    )


def add_score_threshold_argument(
    parser: argparse.ArgumentParser, *, default: float | None, what: str
) -> None:
    """Adds `--score-threshold S` (dest `score_threshold`), the one name of the threshold."""
    shown = "the config's" if default is None else f"{default:g}"
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=default,
        metavar="S",
        help=f"{what} only detections scoring at least S, in [0, 1] (default: {shown})",
    )


def error_line(exc: BaseException) -> str:
    """The one line a CLI prints for `exc` (without the "error: " prefix).

    The package's errors (`rfcn_tf.errors.RfcnError`, and the config/data/checkpoint errors)
    are their message; a TensorFlow op error is its first line (an in-graph data assertion
    becomes the DataError it stands for, naming the file); anything else is "Type: message".
    """
    module = type(exc).__module__ or ""
    if module.startswith("tensorflow"):
        try:
            from rfcn_tf.data.errors import data_error_from

            found = data_error_from(exc)
        except ImportError:
            found = None
        if found is not None:
            return str(found)
        message = str(getattr(exc, "message", None) or exc)
        lines = [
            line
            for line in message.splitlines()
            if line.strip() and not line.startswith(("Graph execution error", "Detected at node"))
        ]
        return f"{type(exc).__name__}: {(lines or [''])[0].strip()}"
    from rfcn_tf.errors import RfcnError

    text = str(exc).strip() or type(exc).__name__
    names = type(exc).__name__
    if isinstance(exc, RfcnError) or names.endswith(
        (
            "ConfigError",
            "DataError",
            "CheckpointError",
            "TrainingError",
            "ExportError",
            "ServingError",
            "NonFiniteLossError",
            "CLIError",
        )
    ):
        return text
    return f"{names}: {text}"


def _quiet_tensorflow_after_error() -> None:
    """Silences TF's restore warnings (logged when a failed restore is garbage collected,
    after our line) and absl's exit-time logs, so the error is the last line on screen."""
    if "tensorflow" not in sys.modules:
        return
    try:
        from rfcn_tf.engine.checkpoints import silence_restore_warnings

        silence_restore_warnings()
    except Exception:  # the engine may not import in a broken install: the error still shows
        pass
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run_cli(
    parser: argparse.ArgumentParser,
    main_fn: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    *,
    interrupted: str = "interrupted",
) -> int:
    """Parses `argv` and runs `main_fn(args)` under the one-line error policy (module docstring).

    Returns:
        `main_fn`'s status (None: 0); 1 after an error; 130 after Ctrl-C.
    """
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    debug = bool(getattr(args, "debug", False) or os.environ.get("RFCN_TRACEBACK"))
    try:
        status = main_fn(args)
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr, flush=True)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:
        _quiet_tensorflow_after_error()
        if debug:
            import traceback

            traceback.print_exc()
        print(f"error: {error_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0 if status is None else int(status)


def add_model_source_arguments(
    parser: argparse.ArgumentParser, *, saved_model_note: str = ""
) -> None:
    """Adds the required choice between `--checkpoint` and `--saved-model` (dests `checkpoint`,
    `saved_model`; the one not given is None).

    Args:
        parser: the CLI's parser.
        saved_model_note: appended to the `--saved-model` help (e.g. where class names come from).
    """
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        metavar="PATH_OR_DIR",
        help=(
            "training checkpoint prefix (.../checkpoints/ckpt-1500) or a folder of checkpoints "
            "(its latest is used); the model is built from the config"
        ),
    )
    source.add_argument(
        "--saved-model",
        metavar="DIR",
        help=(
            "exported SavedModel (export/<name>/<version>, or export/<name> for the latest "
            "version), run through its serving_default signature" + saved_model_note
        ),
    )
