"""``sat download NAME``: fetch and unpack a pretrained model into the sat home folder
(``$SAT_HOME``, see ``sat.resources.sat_home``), resuming a partial download; prints its path."""

from __future__ import annotations

import argparse

from sat.tools.cli.common import add_command

EXAMPLE = """examples:
  sat download roberta-base
  sat download my-model --url https://example.org/my-model.zip --home ./checkpoints
"""


def register(subparsers) -> None:
    """Add ``download`` to ``subparsers``."""
    parser = add_command(subparsers, "download", run, "download a pretrained model", __doc__ + "\n" + EXAMPLE)
    parser.add_argument("name", help="a pretrained name (sat list-models), or any name with --url")
    parser.add_argument("--url", default=None, help="the zip archive to download instead of the known one")
    parser.add_argument("--home", default=None, help="the folder to put it in (default: the sat home folder)")


def run(options: argparse.Namespace) -> None:
    """Download ``options.name`` (unless present) and print its folder."""
    from sat.resources import auto_create

    print(auto_create(options.name, path=options.home, url=options.url))
