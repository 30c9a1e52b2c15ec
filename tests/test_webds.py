"""Tar-shard datasets (sat.data_utils.webds): every sample once per epoch across data-parallel
ranks and DataLoader workers, the same order for the same seed, and side-car metadata
(that ``import sat.data_utils`` leaves webdataset unloaded is in test_package.py)."""

from __future__ import annotations

import itertools
import json
import types
from functools import partial

import pytest
import torch
from distributed import run_workers
from tar_shards import write_shards

from sat import mpu
from sat.data_utils import MetaDistributedWebDataset, SimpleDistributedWebDataset


def keys(samples):
    """A process_fn: the original's form, the sample iterator in, training samples out."""
    for sample in samples:
        yield sample["txt"].decode()


def read(make, rank: int, world: int, n: int, monkeypatch, workers: int = 2) -> list[str]:
    """The first ``n`` samples data-parallel rank ``rank`` of ``world`` reads with ``workers``
    from the dataset ``make()`` builds (a dataset takes its rank when built)."""
    monkeypatch.setattr(mpu, "get_data_parallel_rank", lambda: rank)
    monkeypatch.setattr(mpu, "get_data_parallel_world_size", lambda: world)
    stream = iter(torch.utils.data.DataLoader(make(), batch_size=None, num_workers=workers))
    return [next(stream) for _ in range(n)]


def read_as(make, rank: int, worker: int, n: int, monkeypatch) -> list[str]:
    """The first ``n`` samples of DataLoader worker ``worker`` of 2 on rank ``rank`` of 2."""
    monkeypatch.setattr(mpu, "get_data_parallel_rank", lambda: rank)
    monkeypatch.setattr(mpu, "get_data_parallel_world_size", lambda: 2)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(num_workers=2, id=worker))
    stream = iter(make())
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize("shards", [7, 1])  # uneven over 4 readers, fewer shards than readers
def test_each_sample_once_per_epoch_across_ranks_and_workers(tmp_path, monkeypatch, shards):
    per_shard = 8 if shards == 1 else 4
    path = "::".join(write_shards(tmp_path, shards, per_shard))
    # Reader r = rank * 2 + worker holds shards r, r + 4, ... of each epoch's order, or with one
    # shard every 4th of its samples.
    share = [2] * 4 if shards == 1 else [len(range(r, shards, 4)) * per_shard for r in range(4)]

    def epoch(seed):
        ds = partial(SimpleDistributedWebDataset, path, keys, seed, shuffle_buffer=3)
        return [read_as(ds, r // 2, r % 2, share[r], monkeypatch) for r in range(4)]

    first = epoch(seed=5)
    assert sorted(sum(first, [])) == sorted(f"s{s}_{i}" for s in range(shards) for i in range(per_shard))
    assert epoch(seed=5) == first and epoch(seed=6) != first


def test_two_ranks_with_two_dataloader_workers_split_one_epoch(tmp_path, monkeypatch):
    path = write_shards(tmp_path, 4, 3)
    ds = partial(SimpleDistributedWebDataset, path, keys, 1, shuffle_buffer=2)
    ranks = [read(ds, rank, 2, 6, monkeypatch) for rank in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(f"s{s}_{i}" for s in range(4) for i in range(3))
    assert [read(ds, rank, 2, 6, monkeypatch) for rank in range(2)] == ranks


def test_the_stream_repeats_epoch_after_epoch_and_nshards_ends_it(tmp_path, monkeypatch):
    path = write_shards(tmp_path, 2, 3)
    one_reader = read(partial(SimpleDistributedWebDataset, path, keys, 0, shuffle_buffer=1), 0, 1, 12, monkeypatch, 0)
    assert sorted(one_reader[:6]) == sorted(one_reader[6:]) == sorted(f"s{s}_{i}" for s in range(2) for i in range(3))
    assert len(list(MetaDistributedWebDataset(path, keys, 0, nshards=3, shuffle_buffer=1))) == 9


def test_meta_dataset_adds_side_car_fields_to_samples_with_an_id(tmp_path):
    write_shards(tmp_path / "", 1, 3)
    lines = [{"key": "s0_0", "phash": "ab"}, {"key": "s0_2", "phash": None, "other": 1}]
    (tmp_path / "000.meta.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n")
    (tmp_path / "more").mkdir()
    write_shards(tmp_path / "more", 1, 1)

    def phashes(samples):
        for sample in samples:
            yield sample["__key__"], sample["phash"]

    ds = MetaDistributedWebDataset("", phashes, 0, meta_names=["phash"], include_dirs=f"{tmp_path}/more*2")
    assert ds.urls == [str(tmp_path / "more" / "000.tar")] * 2
    ds = MetaDistributedWebDataset(str(tmp_path / "000.tar"), phashes, 0, meta_names=["phash"], shuffle_buffer=1)
    assert list(itertools.islice(ds, 3)) == [("s0_0", "ab"), ("s0_1", None), ("s0_2", None)]


def test_missing_shards_are_named():
    with pytest.raises(ValueError, match="no tar shards"):
        MetaDistributedWebDataset("", keys, 0)


def _first_epoch_keys(rank: int, world_size: int, path: list[str]) -> list[str]:
    # Rank and world size come from the gloo process group; the workers are spawned (run_workers
    # spawns, and its processes' DataLoaders then do too), so they have no process group.
    stream = iter(
        torch.utils.data.DataLoader(SimpleDistributedWebDataset(path, keys, 3), batch_size=None, num_workers=2)
    )
    return [next(stream) for _ in range(6)]


@pytest.mark.multiprocess
@pytest.mark.slow  # 2 spawned ranks, each spawning 2 DataLoader workers
def test_two_gloo_ranks_read_one_epoch_between_them(tmp_path):
    path = write_shards(tmp_path, 4, 3)
    ranks = run_workers(_first_epoch_keys, 2, path)
    assert sorted(ranks[0] + ranks[1]) == sorted(f"s{s}_{i}" for s in range(4) for i in range(3))
