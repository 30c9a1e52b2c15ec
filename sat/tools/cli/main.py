"""The ``sat`` parser and its exit codes: 0 on success, 2 on bad usage (argparse), 1 on a failure,
reported as one line naming the problem (the traceback too with ``--debug``)."""

from __future__ import annotations

import argparse
import sys
import traceback

from sat.tools.cli import chat, convert, download, generate, info, list_models, merge_lora, reshard

SUBCOMMANDS = (convert, info, generate, chat, reshard, merge_lora, list_models, download)


def build_parser() -> argparse.ArgumentParser:
    """``sat`` with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="sat", description="Convert, inspect and run sat checkpoints (python -m sat.tools.cli works too)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def one_line(error: BaseException) -> str:
    """``error`` as one line: its type and its message with line breaks folded."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``sat`` with ``argv`` (default: the command line); returns the exit code."""
    options = build_parser().parse_args(argv)
    try:
        options.run(options)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if options.debug:
            traceback.print_exc()
        print(f"sat {options.command}: error: {one_line(error)}", file=sys.stderr)
        return 1
    return 0
