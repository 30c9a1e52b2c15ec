"""The ``sat`` command: convert, inspect, generate with, chat with, reshard, merge and download
checkpoints without writing a script. One module per subcommand, each with ``register(subparsers)``;
``main`` is the console script's entry point (``python -m sat.tools.cli`` runs it too)."""

from sat.tools.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
