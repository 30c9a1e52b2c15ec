"""Writes that readers see whole or not at all: a temporary name, fsync, rename into place, fsync
of the directory (so the rename itself survives a power loss)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` and rename into place: readers see old or new, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(os.path.dirname(path) or ".")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_directory(directory: str) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
