"""Logging and small utilities shared by the whole package.

Messages go through the logger named ``sat``; its level comes from ``SAT_LOGLEVEL`` (or
``LOGLEVEL``), default INFO. In a distributed run each message carries its global rank.

A leaf of the package: it imports no other sat module, so every layer can use it. Names that
used to live here and moved to a higher layer stay importable through ``moved_names``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import shutil
import socket
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import torch


def _configure_logger() -> logging.Logger:
    logger = logging.getLogger("sat")
    level = os.environ.get("LOGLEVEL") or os.environ.get("SAT_LOGLEVEL") or "INFO"
    logger.setLevel(level.upper())
    if not any(getattr(h, "_sat_handler", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] %(message)s"))
        handler._sat_handler = True
        logger.addHandler(handler)
        # Our handler prints; stopping propagation avoids printing twice when the user has
        # configured the root logger too.
        logger.propagate = False
    return logger


logger = _configure_logger()
T = TypeVar("T")


def _as_level(level: int | str) -> int:
    if isinstance(level, str):
        return getattr(logging, level.upper())
    return level


def _distributed_rank() -> int | None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return None


def print_rank0(msg: object, level: int | str = logging.INFO, flush: bool = True) -> None:
    """Log ``msg`` once: on global rank 0, or in a process without ``torch.distributed``."""
    rank = _distributed_rank()
    if rank is None:
        logger.log(_as_level(level), msg)
    elif rank == 0:
        logger.log(_as_level(level), f"[RANK {rank}] {msg}")
    if flush:
        _flush()


def print_all(msg: object, level: int | str = logging.INFO, flush: bool = True) -> None:
    """Log ``msg`` on every rank, prefixed with the rank in a distributed run."""
    rank = _distributed_rank()
    logger.log(_as_level(level), msg if rank is None else f"[RANK {rank}] {msg}")
    if flush:
        _flush()


def _flush() -> None:
    for handler in logger.handlers:
        handler.flush()


def print_parser(parser: argparse.ArgumentParser, help_width: int = 32) -> None:
    """Print every option of ``parser`` as a table: name, help, type and default."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or "--help" in action.option_strings:
            continue
        name = ", ".join(opt.lstrip("-") for opt in action.option_strings) or action.dest
        kind = action.type.__name__ if action.type else ("bool" if action.nargs == 0 else "str")
        rows.append((name, action.help or "", kind, str(action.default)))
    name_width = max(len(row[0]) for row in rows)
    rule = "-" * (name_width + help_width + 24)
    print(rule)
    print(f"{'Argument'.ljust(name_width)}  {'Help'.ljust(help_width)}  {'Type'.ljust(8)}  Default")
    print(rule)
    wrapper = textwrap.TextWrapper(width=help_width)
    for name, help_text, kind, default in rows:
        lines = wrapper.wrap(help_text) or [""]
        print(f"{name.ljust(name_width)}  {lines[0].ljust(help_width)}  {kind.ljust(8)}  {default}")
        for line in lines[1:]:
            print(f"{''.ljust(name_width)}  {line}")


def print_columns(items: list[str], spacing: int = 2) -> None:
    """Print ``items`` in as many columns as the terminal is wide enough for."""
    width = max(len(s) for s in items) + spacing
    columns = max(1, shutil.get_terminal_size().columns // width)
    rows = (len(items) + columns - 1) // columns
    for row in range(rows):
        print("".join(items[row + col * rows].ljust(width) for col in range(columns) if row + col * rows < len(items)))


def get_free_port() -> int:
    """A TCP port on localhost that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (as it was after it); the objects
    the block made are then collected as the young generation they are. Loading a model
    allocates thousands of objects and no cycles. With the collector on, they trigger a full
    collection there, which walks everything torch and the model hold (70-80 ms on a GPT-2
    medium load); merely re-enabling it afterwards starts with thousands of objects counted and
    did the same (whether it does depends on what the process did before). One young collection
    at the end leaves the collector's schedule of full collections as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.collect(0)
            gc.enable()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
    """``iterable`` with a tqdm progress bar when one helps: on rank 0, with stderr a terminal and
    the ``sat`` logger at INFO or lower (``SAT_LOGLEVEL=WARNING`` turns it off); else
    ``iterable`` itself, so logs and CI output stay free of bar redraws."""
    rank = _distributed_rank()
    if rank not in (None, 0) or not sys.stderr.isatty() or logger.getEffectiveLevel() > logging.INFO:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


def moved_names(module_name: str, moved: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for names that moved to a higher layer but stay public at
    their old path: ``moved`` maps each name to its new module, imported on first access (an
    import at the old place would run the wrong way through the layers). Use as
    ``__getattr__ = moved_names(__name__, {"name": "new.module"})``."""

    def __getattr__(name: str) -> object:
        if name in moved:
            return getattr(importlib.import_module(moved[name]), name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = moved_names(
    __name__,
    {
        "check_if_zero3": "sat.runtime",
        "list_avail_models": "sat.model.auto",
        "list_avail_pretrained": "sat.resources",
    },
)
