"""Iterable (streaming) datasets: a JSON-lines stream and a weighted mix of streams.

A stream is cut into one shard per (data-parallel rank, DataLoader worker), so no two
processes read the same record, and every random choice is seeded by ``seed`` and that shard:
the stream is the same at every run. Model-parallel peers share a data-parallel rank, so they
read the same records.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from sat import mpu


def data_parallel_position() -> tuple[int, int]:
    """``(data-parallel rank, data-parallel world size)`` of the calling process. The datasets
    take it when they are built, in the training process, so their DataLoader workers read their
    rank's share whether they are forked or spawned (a spawned worker has no process group)."""
    return mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()


def shard_info(position: tuple[int, int]) -> tuple[int, int]:
    """``(shard, num_shards)`` of the calling process: the data-parallel rank of ``position``
    times the DataLoader's workers, plus its worker id."""
    rank, world = position
    worker = torch.utils.data.get_worker_info()
    workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
    return rank * workers + worker_id, world * workers


def shuffled(records: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """``records`` through a shuffle buffer of ``size`` (1 keeps their order): once the buffer
    is full, each new record replaces a randomly drawn one; the rest come out shuffled at the end."""
    buffer: list = []
    for record in records:
        buffer.append(record)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from reversed(buffer)


def expand_paths(path: str | Sequence[str]) -> list[str]:
    """The parts of ``path``: a list as given, or a string split at commas outside braces, then
    brace-expanded (``data/{000..009}.tar``) like the original; ``braceexpand`` is imported only
    for a string that has braces."""
    if not isinstance(path, str):
        return list(path)
    parts = re.split(r",(?![^{]*})", path)
    if "{" not in path:
        return parts
    from braceexpand import braceexpand

    return [expanded for part in parts for expanded in braceexpand(part)]


def expand_jsonl_paths(path: str | Sequence[str]) -> list[str]:
    """``.jsonl`` files named by ``path`` (see ``expand_paths``): files, folders (searched
    recursively) or glob patterns; sorted, so every process sees the same order."""
    files: list[str] = []
    for part in expand_paths(path):
        if os.path.isdir(part):
            files += glob.glob(os.path.join(part, "**", "*.jsonl"), recursive=True)
        else:
            matches = glob.glob(part)
            if not matches:
                raise FileNotFoundError(f"no JSON-lines file matches {part!r}")
            files += matches
    return sorted(set(files))


class JsonlIterableDataset(IterableDataset):
    """Records of ``.jsonl`` files, repeated forever, as the original's ``process_fn`` sees them:
    ``process_fn(records)`` takes the iterator of records (dicts, with ``__url__`` set to the file
    and ``None`` values turned into ``''``) and yields the samples, so it may pack several records
    into one sample or skip some. Each pass reads this shard's lines (every ``num_shards``-th
    line) through a shuffle buffer of ``shuffle_buffer`` records (1 keeps the file order)."""

    def __init__(
        self,
        path: str | Sequence[str],
        process_fn: Callable[[Iterator[dict]], Iterable],
        seed: int,
        *,
        shuffle_buffer: int = 1000,
    ):
        self.files = expand_jsonl_paths(path)
        if not self.files:
            raise FileNotFoundError(f"no .jsonl files under {path!r}")
        self.process_fn = process_fn
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.position = data_parallel_position()

    def _records(self, shard: int, num_shards: int) -> Iterator[dict]:
        line_number = 0
        for name in self.files:
            with open(name, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    if line_number % num_shards == shard:
                        record = {k: "" if v is None else v for k, v in json.loads(line).items()}
                        yield {**record, "__url__": name}
                    line_number += 1

    def _passes(self, shard: int, num_shards: int) -> Iterator[dict]:
        rng = np.random.default_rng((self.seed, shard))
        while True:
            produced = False
            for record in shuffled(self._records(shard, num_shards), self.shuffle_buffer, rng):
                produced = True
                yield record
            if not produced:
                raise ValueError(f"shard {shard} of {num_shards} has no records in {self.files}: too few lines")

    def __iter__(self) -> Iterator:
        return iter(self.process_fn(self._passes(*shard_info(self.position))))


class AlterDataset(IterableDataset):
    """Draws from several iterable datasets with probabilities proportional to ``weights``.

    With ``batch_from_same_dataset`` every ``batch_size`` consecutive samples come from one
    source, chosen the same way on every rank (so a global batch is from a single source). A
    source that ends is dropped; the mix ends when all have.
    """

    def __init__(
        self,
        datasets: Sequence[IterableDataset],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        batch_from_same_dataset: bool = False,
        batch_size: int = 1,
    ):
        if not datasets:
            raise ValueError("AlterDataset needs at least one dataset")
        weights = list(weights) if weights is not None else [1.0] * len(datasets)
        if len(weights) != len(datasets) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per dataset (not all zero), got {weights}")
        self.datasets = list(datasets)
        self.weights = weights
        self.seed = seed
        self.batch_from_same_dataset = batch_from_same_dataset
        self.batch_size = batch_size
        self.position = data_parallel_position()

    def __iter__(self) -> Iterator:
        iterators = [iter(d) for d in self.datasets]
        weights = np.array(self.weights, dtype=np.float64)
        shard, _ = shard_info(self.position)
        # The same choices on every rank when whole batches must come from one source.
        rng = np.random.default_rng((self.seed,) if self.batch_from_same_dataset else (self.seed, shard))
        run = self.batch_size if self.batch_from_same_dataset else 1
        while iterators:
            which = int(rng.choice(len(iterators), p=weights / weights.sum()))
            try:
                for _ in range(run):
                    yield next(iterators[which])
            except StopIteration:
                del iterators[which]
                weights = np.delete(weights, which)
