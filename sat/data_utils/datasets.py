"""Datasets read from files: fixed-length binary rows, TSV and JSON lines.

Each takes a ``process_fn`` that turns one raw record (a NumPy row, a list of fields, a dict)
into a training sample; ``create_dataset_function(path, args)`` usually returns one of these.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset


class BinaryDataset(Dataset):
    """Rows of ``length_per_sample`` values of ``dtype`` in a flat binary file, memory-mapped
    (``preload=True`` reads the whole file into memory instead).
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(
        self,
        path: str,
        process_fn: Callable,
        length_per_sample: int = 64 + 1024 + 4096,
        dtype: str | np.dtype = "int32",
        preload: bool = False,
        **kwargs,
    ):
        self.length_per_sample = length_per_sample
        self.dtype = np.dtype(dtype)
        self.process_fn = process_fn
        row_bytes = length_per_sample * self.dtype.itemsize
        size = os.path.getsize(path)
        if size % row_bytes:
            raise ValueError(
                f"{path} holds {size} bytes, not a whole number of rows of {length_per_sample} x {self.dtype} "
                f"({row_bytes} bytes): wrong length_per_sample or dtype?"
            )
        shape = (size // row_bytes, length_per_sample)
        if preload:
            self.bin = np.fromfile(path, dtype=self.dtype).reshape(shape)
        else:
            self.bin = np.memmap(path, dtype=self.dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return self.bin.shape[0]

    def __getitem__(self, index: int):
        return self.process_fn(self.bin[index])


class TSVDataset(Dataset):
    """Tab-separated lines; ``process_fn`` gets each line's fields (without the newline). With
    ``with_heads`` the first line is the header, kept in ``self.heads``.
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(self, path: str, process_fn: Callable, with_heads: bool = True, **kwargs):
        self.process_fn = process_fn
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
        self.heads = lines.pop(0).split("\t") if with_heads and lines else None
        self.items = [line.split("\t") for line in lines if line]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.process_fn(self.items[index])


class JsonlDataset(Dataset):
    """One JSON object per line, read on demand (only the line offsets are kept in memory);
    ``process_fn`` gets the parsed object.
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(self, path: str, process_fn: Callable, **kwargs):
        self.path = path
        self.process_fn = process_fn
        self.offsets: list[int] = []
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                if line.strip():
                    self.offsets.append(offset)
                offset += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int):
        with open(self.path, "rb") as f:
            f.seek(self.offsets[index])
            line = f.readline()
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: record {index} is not valid JSON: {e}") from None
        return self.process_fn(record)
