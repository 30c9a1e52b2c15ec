"""Tar-shard streams on the ``webdataset`` package: ``SimpleDistributedWebDataset`` and
``MetaDistributedWebDataset``, the original's ``create_dataset_function`` results for
``--iterable-dataset``. Needs ``pip install webdataset``; ``sat.data_utils`` imports this module
only when one of them is first used.

Every epoch the shards are put in an order drawn from ``(seed, epoch)`` and dealt to the
readers (data-parallel rank x DataLoader worker), so each sample is read exactly once per epoch
and the stream repeats, epoch after epoch. With fewer shards than readers every reader reads
all of them and keeps every ``readers``-th sample instead. Model-parallel peers share a
data-parallel rank and so read the same samples in the same order; the original had to turn
shuffling off for them. The data-parallel rank is taken when the dataset is built, so spawned
DataLoader workers (which have no process group) still read their rank's share.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from sat.data_utils.iterable import data_parallel_position, shard_info, shuffled
from sat.helpers import print_rank0


def expand_shards(path: str | Sequence[str]) -> list[str]:
    """Shard names of ``path``: a list as given, or a string split at ``::`` and brace-expanded
    (``data/{000..009}.tar``), as ``webdataset`` reads it."""
    urls = expand_urls(path) if isinstance(path, str) else list(path)
    if not urls:
        raise ValueError(f"no tar shards in {path!r}")
    return urls


class _ShardPipeline(wds.DataPipeline):
    """Shards -> samples (dicts of ``__key__``, ``__url__`` and one bytes value per file
    extension) -> this reader's samples -> shuffle buffer -> ``process_fn(samples)``.

    The shuffle buffer is emptied at the end of each epoch, so an epoch never lends samples to
    the next; ``process_fn`` is called once, on the endless stream, so it may keep state (a
    token packer) across shards and epochs."""

    def __init__(
        self,
        urls: list[str],
        process_fn: Callable[[Iterator[dict]], Iterable],
        seed: int,
        shuffle_buffer: int,
        nshards: int,
    ):
        super().__init__(self._samples, process_fn)
        self.urls = urls
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.nshards = nshards
        self.position = data_parallel_position()

    def _samples(self) -> Iterator[dict]:
        reader, readers = shard_info(self.position)
        whole_shards = len(self.urls) >= readers
        rng = np.random.default_rng((self.seed, reader))
        left = self.nshards
        for epoch in itertools.count():
            order = np.random.default_rng((self.seed, epoch)).permutation(len(self.urls))
            mine = (order[reader::readers] if whole_shards else order)[:left]
            if len(mine) == 0:
                return
            left -= len(mine)
            samples = self._with_meta(tarfile_samples([{"url": self.urls[i]} for i in mine]))
            if not whole_shards:
                # Every reader reads every shard in the same order, so counting samples splits them.
                samples = itertools.islice(samples, reader, None, readers)
            yield from shuffled(samples, self.shuffle_buffer, rng)

    def _with_meta(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Where a subclass adds fields to each sample read from the tar files."""
        return samples


class SimpleDistributedWebDataset(_ShardPipeline):
    """The samples of the tar shards in ``path``, passed as an iterator to ``process_fn``, which
    yields the training samples (``shuffle_buffer=1`` keeps each shard's order)."""

    def __init__(
        self,
        path: str | Sequence[str],
        process_fn: Callable[[Iterator[dict]], Iterable],
        seed: int,
        *,
        shuffle_buffer: int = 1000,
    ):
        super().__init__(expand_shards(path), process_fn, seed, shuffle_buffer, sys.maxsize)


class MetaDistributedWebDataset(_ShardPipeline):
    """Tar shards with side-car metadata: next to ``NAME.tar`` a ``NAME.meta.jsonl`` holds one JSON
    object per line, whose ``key`` is a sample's key; each sample that has an ``.id`` file gets a
    value for every name in ``meta_names`` (``None`` where its line lacks it).

    Args:
        nshards: how many shards this reader reads before the stream ends (default: no end).
        include_dirs: ``"dirA,dirB*3"``: also every non-empty ``.tar`` under these folders, those
            of a folder marked ``*n`` listed ``n`` times (read ``n`` times per epoch).
    """

    def __init__(
        self,
        path: str | Sequence[str],
        process_fn: Callable[[Iterator[dict]], Iterable],
        seed: int,
        *,
        meta_names: Sequence[str] = (),
        nshards: int = sys.maxsize,
        shuffle_buffer: int = 1000,
        include_dirs: str | None = None,
    ):
        urls = expand_shards(path) if path else []
        if include_dirs is not None:
            urls += _tars_under(include_dirs)
        if not urls:
            raise ValueError(f"no tar shards in path {path!r} or include_dirs {include_dirs!r}")
        self.meta_names = list(meta_names)
        self._meta: dict[str, dict[str, dict]] = {}  # shard url -> sample key -> its metadata
        super().__init__(urls, process_fn, seed, shuffle_buffer, nshards)

    def _with_meta(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            if "id" in sample:
                record = self._meta_of(sample["__url__"]).get(sample["__key__"], {})
                sample.update({name: record.get(name) for name in self.meta_names})
            yield sample

    def _meta_of(self, url: str) -> dict[str, dict]:
        if url not in self._meta:
            self._meta[url] = _read_meta(url, self.meta_names)
        return self._meta[url]


def meta_path(url: str) -> str:
    """The side-car file of shard ``url``: ``dir/NAME.meta.jsonl`` for ``dir/NAME.tar``."""
    folder, name = os.path.split(url)
    return os.path.join(folder, name.split(".")[0] + ".meta.jsonl")


def _read_meta(url: str, meta_names: Sequence[str]) -> dict[str, dict]:
    path = meta_path(url)
    if not os.path.isfile(path):
        return {}
    meta: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                # Like the original, a broken line loses its metadata, not the run.
                print_rank0(f"{path}, line {number}: not valid JSON, skipped", level="DEBUG")
                continue
            meta.setdefault(item["key"], {}).update({n: item[n] for n in meta_names if n in item})
    return meta


def _tars_under(include_dirs: str) -> list[str]:
    urls: list[str] = []
    for entry in include_dirs.split(","):
        folder, _, times = entry.partition("*")
        for root, _, files in sorted(os.walk(folder)):
            for name in sorted(files):
                path = os.path.join(root, name)
                if name.endswith("tar") and os.path.getsize(path) > 0:
                    urls += [path] * int(times or 1)
    return urls
