"""Command-line arguments shared by the rfcn_tf CLIs (train, evaluate, predict, export, inspect).

Every CLI reads its config the same way (`--config NAME_OR_YAML`, repeatable `--set KEY=VALUE`
into `args.overrides`) and the inference CLIs choose their model the same way (`--checkpoint` or
`--saved-model`); defining the flags once keeps their names, destinations and defaults identical
across commands. Each CLI passes the part of the help text that is its own (what its default
config is, an example override).
"""

from __future__ import annotations

import argparse

__all__ = ["add_config_arguments", "add_model_source_arguments"]


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str,
                         set_example: str) -> None:
    """Adds `--config` (dest `config`, default None) and `--set` (dest `overrides`, a list).

    Args:
        parser: the CLI's parser (or argument group).
        config_help: what this CLI does without `--config` and anything else about it, appended
            to "config preset name (configs/<name>.yaml) or path to a YAML file; ".
        set_example: one override this CLI's users are likely to need, e.g. "train.lr=0.01".
    """
    parser.add_argument(
        "--config", default=None, metavar="NAME_OR_YAML",
        help=f"config preset name (configs/<name>.yaml) or path to a YAML file; {config_help}")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=(f"override one config value, e.g. --set {set_example} "
              "(repeatable; values are parsed as YAML)"))


def add_model_source_arguments(parser: argparse.ArgumentParser, *,
                               saved_model_note: str = "") -> None:
    """Adds the required choice between `--checkpoint` and `--saved-model` (dests `checkpoint`,
    `saved_model`; the one not given is None).

    Args:
        parser: the CLI's parser.
        saved_model_note: appended to the `--saved-model` help (e.g. where class names come from).
    """
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="PATH_OR_DIR",
        help=("training checkpoint prefix (.../checkpoints/ckpt-1500) or a folder of checkpoints "
              "(its latest is used); the model is built from the config"))
    source.add_argument(
        "--saved-model", metavar="DIR",
        help=("exported SavedModel (export/<name>/<version>, or export/<name> for the latest "
              "version), run through its serving_default signature" + saved_model_note))
