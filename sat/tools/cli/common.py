"""What several subcommands share: adding a subcommand with ``--debug``, importing the modules
that define custom model classes, and copying a checkpoint's recorded tokenizer."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from collections.abc import Callable


def add_command(
    subparsers, name: str, run: Callable[[argparse.Namespace], None], summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand parser that calls ``run(options)``, with ``--debug`` (show a failure's traceback)."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=(description or summary).replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    parser.set_defaults(run=run)
    return parser


def add_source_and_target(parser: argparse.ArgumentParser, source_help: str, target_help: str) -> None:
    """The positional ``source`` and ``target`` of the subcommands that write a new directory."""
    parser.add_argument("source", help=source_help)
    parser.add_argument("target", help=target_help)


def write_stdout(text: str) -> None:
    """Print ``text`` at once (streamed output: no newline added, flushed)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE ...``: modules to import first, so the model classes they define are registered."""
    parser.add_argument(
        "--import",
        dest="imports",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="modules defining custom model classes (registered when imported)",
    )


def import_modules(names: list[str]) -> None:
    """Import each module of ``--import``."""
    for name in names:
        importlib.import_module(name)


def copy_recorded_tokenizer(source: str, target: str) -> str | None:
    """Copy the tokenizer that ``source``'s ``model_config.json`` records inside ``source`` (a
    relative ``tokenizer_type``) to the same place in ``target``; returns the copy's path (None
    when there is nothing to copy). A ``model_config.json`` copied verbatim names the copy."""
    from sat.checkpoint import model_config_path, read_model_config

    recorded = read_model_config(model_config_path(source)).get("tokenizer_type")
    if not recorded or os.path.isabs(recorded) or not os.path.exists(os.path.join(source, recorded)):
        return None
    path, copy = os.path.join(source, recorded), os.path.join(target, recorded)
    if os.path.isdir(path):
        shutil.copytree(path, copy, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        shutil.copy2(path, copy)
    return copy
