"""Data utilities: splits that never overlap, weights, determinism per seed and data-parallel
rank, resumable positions, file datasets, iterable streams and HF datasets from local files."""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np
import pytest
import torch

from sat import mpu
from sat.arguments import add_data_args, add_evaluation_args, add_training_args
from sat.data_utils import (
    AlterDataset,
    BinaryDataset,
    ConcatDataset,
    DistributedBatchSampler,
    JsonlDataset,
    JsonlIterableDataset,
    RandomDataset,
    RandomMappingDataset,
    TSVDataset,
    get_split,
    load_hf_dataset,
    make_loaders,
    split_ds,
)
from sat.data_utils.hf_dataset import saved_copy_path


class Numbers(torch.utils.data.Dataset):
    """Sample i is i + offset: which sample went where is visible in the batches."""

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i + self.offset


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for add in (add_training_args, add_evaluation_args, add_data_args):
        add(parser)
    args = parser.parse_args(["--num-workers", "0", *argv])
    args.iterable_dataset_eval = args.iterable_dataset
    return args


@pytest.fixture
def data_parallel(monkeypatch):
    """Pretend to be data-parallel rank ``rank`` of ``world`` (no processes needed)."""

    def set_rank(rank: int, world: int):
        monkeypatch.setattr(mpu, "get_data_parallel_rank", lambda: rank)
        monkeypatch.setattr(mpu, "get_data_parallel_world_size", lambda: world)

    return set_rank


def _flat(loader, batches: int) -> list[list[int]]:
    it = iter(loader)
    return [next(it).tolist() for _ in range(batches)]


# ----------------------------------------------------------------------------- splits
def test_get_split_forms_and_explicit_eval_data():
    assert get_split(_args("--split", "8,1,1")) == [0.8, 0.1, 0.1]
    assert get_split(_args("--split", "0.5/0.25")) == [0.5, 0.25, 0.25]
    assert get_split(_args("--split", "1")) == [1.0, 0.0, 0.0]
    assert get_split(_args("--split", "8,1,1", "--valid-data", "v")) == [8 / 9, 0.0, 1 / 9]
    with pytest.raises(ValueError, match="--split must be numbers"):
        get_split(_args("--split", "8;1"))


@pytest.mark.parametrize(
    "n, block, split", [(1000, 100, [0.8, 0.1, 0.1]), (37, 10000, [1000, 1, 1]), (95, 10, [3, 0, 1])]
)
def test_split_parts_are_disjoint_cover_everything_and_follow_the_proportions(n, block, split):
    parts = split_ds(Numbers(n), split, block_size=block, seed=7)
    contents = [sorted(part[i] for i in range(len(part))) if part is not None else [] for part in parts]
    flat = [x for c in contents for x in c]
    assert sorted(flat) == list(range(n))  # every sample in exactly one part
    for fraction, part in zip(split, parts):
        assert (part is None) == (fraction == 0)
    if n == 1000:
        assert [len(c) for c in contents] == [800, 100, 100]
    if n == 37:  # the default 1000,1,1 on a small set still gives valid and test a sample each
        assert [len(c) for c in contents] == [35, 1, 1]
    assert split_ds(Numbers(n), split, block_size=block, seed=7)[0][0] == parts[0][0]  # same seed, same split


def test_split_depends_on_seed():
    first = split_ds(Numbers(100), [0.5, 0.5, 0], block_size=100, seed=1)[1]
    second = split_ds(Numbers(100), [0.5, 0.5, 0], block_size=100, seed=2)[1]
    assert sorted(first[i] for i in range(50)) != sorted(second[i] for i in range(50))


# ----------------------------------------------------------------------------- wrappers
def test_concat_weights_repeat_each_dataset():
    ds = ConcatDataset([Numbers(3), Numbers(2, offset=100)], weights=[1, 3])
    assert [ds[i] for i in range(len(ds))] == [0, 1, 2, 100, 101, 100, 101, 100, 101]
    with pytest.raises(ValueError, match="2 weights for 1 datasets"):
        ConcatDataset([Numbers(3)], weights=[1, 2])


def test_random_mapping_is_a_function_of_seed_and_index():
    a, b, c = (RandomMappingDataset(Numbers(50), scale=4, seed=s) for s in (1, 1, 2))
    assert len(a) == 200
    assert [a[i] for i in range(200)] == [b[i] for i in range(200)]
    assert [a[i] for i in range(200)] != [c[i] for i in range(200)]
    counts = collections.Counter(a[i] for i in range(200))
    assert len(counts) > 35  # spread over the dataset, not a few samples


def test_random_dataset_visits_every_sample_once_per_epoch_in_a_new_order():
    ds = RandomDataset(Numbers(20), scale=3, seed=5)
    epochs = [[ds[e * 20 + i] for i in range(20)] for e in range(3)]
    assert all(sorted(epoch) == list(range(20)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


# ----------------------------------------------------------------------------- sampler
def test_distributed_batch_sampler_slices_resumes_and_marks_the_last_batch():
    samplers = [DistributedBatchSampler(range(10), 4, False, rank=r, world_size=2) for r in range(2)]
    assert [list(s) for s in samplers] == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [8]]]
    assert samplers[0].last_shape == [2, 0]  # rank 1's [8] is a placeholder
    samplers[1].start_iter = 2
    assert list(samplers[1]) == [[8]]
    assert list(samplers[1]) == [[2, 3], [6, 7], [8]]  # the skip applies once
    full = DistributedBatchSampler(range(12), 4, False, rank=1, world_size=2)
    assert full.last_shape == [2, 2]
    with pytest.raises(ValueError, match="not divisible by 3"):
        DistributedBatchSampler(range(10), 4, False, rank=0, world_size=3)


# ----------------------------------------------------------------------------- make_loaders
def test_make_loaders_ranks_share_global_batches_deterministically(data_parallel):
    def create(path, args):
        return Numbers(100, offset=int(path) * 1000)

    def run(rank: int, seed: int):
        data_parallel(rank, 2)
        args = _args("--train-data", "0", "--split", "8,1,1", "--batch-size", "3", "--seed", str(seed))
        args.train_iters = 5
        train, valid, test = make_loaders(args, create)
        assert args.do_train and args.do_valid and args.do_test
        return _flat(train, 5), _flat(valid, 2)

    rank0, rank1 = run(0, 1), run(1, 1)
    assert run(0, 1) == rank0  # deterministic
    assert run(0, 2)[0] != rank0[0]  # the seed changes the order
    for b0, b1 in zip(rank0[0], rank1[0]):
        assert len(b0) == len(b1) == 3
    # Rank 0 and rank 1 read different positions of the same global sequence.
    assert rank0[0] != rank1[0]


def test_make_loaders_split_never_leaks_eval_samples_into_training(data_parallel):
    data_parallel(0, 1)
    args = _args("--train-data", "x", "--split", "90,5,5", "--batch-size", "10", "--block-size", "50")
    args.train_iters = 30
    train, valid, test = make_loaders(args, lambda path, a: Numbers(200))
    seen = {x for batch in _flat(train, 30) for x in batch}
    held_out = {x for batch in _flat(valid, 20) for x in batch} | {x for batch in _flat(test, 20) for x in batch}
    assert seen and held_out and not seen & held_out
    assert len(seen) > 130  # 300 random draws with replacement reach about 146 of the 180


def test_make_loaders_weights_and_strict_eval(data_parallel):
    data_parallel(1, 2)
    args = _args(
        "--train-data", "0", "1", "--train-data-weights", "1", "3", "--split", "1",
        "--valid-data", "2", "--strict-eval", "--batch-size", "4",
    )  # fmt: skip
    args.train_iters = 200
    train, valid, _ = make_loaders(args, lambda path, a: Numbers(10, offset=int(path) * 1000))
    drawn = collections.Counter(x // 1000 for batch in _flat(train, 200) for x in batch)
    assert 2.5 < drawn[1] / drawn[0] < 3.5  # weight 3 against weight 1
    # Strict eval: every sample once, in order. Rank 0 holds both samples of the last global
    # batch, so rank 1 gets a placeholder (2008) that evaluation drops.
    assert [b.tolist() for b in valid] == [[2004, 2005, 2006, 2007], [2008]]
    assert args.val_last_shape == [2, 0] and args.val_drop_number == 1


def test_make_loaders_epochs_and_resume_position(data_parallel):
    data_parallel(0, 1)
    args = _args("--train-data", "x", "--split", "1", "--epochs", "2", "--batch-size", "4")
    train, _, _ = make_loaders(args, lambda path, a: Numbers(10))
    batches = [b.tolist() for b in train]
    assert len(train) == len(batches) == 5  # 20 samples, last partial batch dropped
    assert sorted(x for b in batches[:2] for x in b) != list(range(8))  # shuffled
    train.batch_sampler.start_iter = 3
    assert [b.tolist() for b in train] == batches[3:]


def test_make_loaders_rejects_mismatched_weights():
    args = _args("--train-data", "a", "b", "--split", "1")
    args.train_data_weights = [1]
    with pytest.raises(ValueError, match="one weight per --train-data entry"):
        make_loaders(args, lambda path, a: Numbers(10))


# ----------------------------------------------------------------------------- file datasets
def test_binary_dataset_memmaps_rows(tmp_path):
    rows = np.arange(24, dtype=np.int32).reshape(4, 6)
    path = tmp_path / "data.bin"
    rows.tofile(path)
    ds = BinaryDataset(str(path), lambda row: row.sum(), length_per_sample=6)
    assert isinstance(ds.bin, np.memmap)
    assert len(ds) == 4 and ds[2] == rows[2].sum()
    assert BinaryDataset(str(path), list, length_per_sample=6, preload=True)[3] == list(rows[3])
    with pytest.raises(ValueError, match="not a whole number of rows of 5"):
        BinaryDataset(str(path), list, length_per_sample=5)


def test_tsv_and_jsonl_datasets(tmp_path):
    tsv = tmp_path / "data.tsv"
    tsv.write_text("text\tlabel\nhello\t1\r\nworld\t0\n")
    ds = TSVDataset(str(tsv), lambda fields: (fields[0], int(fields[1])))
    assert ds.heads == ["text", "label"] and [ds[0], ds[1]] == [("hello", 1), ("world", 0)]
    assert len(TSVDataset(str(tsv), list, with_heads=False)) == 3

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"x": 1}\n\n{"x": 2}\n{"x": 3\n')
    ds = JsonlDataset(str(jsonl), lambda r: r["x"])
    assert len(ds) == 3 and [ds[0], ds[1]] == [1, 2]
    with pytest.raises(ValueError, match="record 2 is not valid JSON"):
        ds[2]


# ----------------------------------------------------------------------------- iterable data
def _write_jsonl(path, values):
    path.write_text("".join(json.dumps({"v": v}) + "\n" for v in values))


def _values(records):
    """The original's process_fn form: the record iterator in, samples out."""
    for record in records:
        yield record["v"]


def test_jsonl_stream_shards_by_rank_shuffles_by_seed_and_repeats(tmp_path, data_parallel):
    _write_jsonl(tmp_path / "a.jsonl", range(10))
    _write_jsonl(tmp_path / "b.jsonl", range(10, 20))

    def take(rank, seed, n=20):
        data_parallel(rank, 2)
        stream = iter(JsonlIterableDataset(str(tmp_path), _values, seed, shuffle_buffer=4))
        return [next(stream) for _ in range(n)]

    rank0, rank1 = take(0, 1), take(1, 1)
    assert set(rank0) == set(range(0, 20, 2)) and set(rank1) == set(range(1, 20, 2))
    assert sorted(rank0[:10]) == sorted(rank0[10:])  # a second pass over the same shard
    assert take(0, 1) == rank0 and take(0, 2) != rank0


def test_jsonl_stream_hands_process_fn_the_record_iterator(tmp_path, data_parallel):
    data_parallel(0, 1)
    _write_jsonl(tmp_path / "p0.jsonl", range(3))
    (tmp_path / "p1.jsonl").write_text(json.dumps({"v": 3, "note": None}) + "\n")

    def pairs(records):  # packs two records into one sample, as a token packer would
        records = iter(records)
        for first in records:
            second = next(records)
            yield first["v"], second["v"], os.path.basename(second["__url__"]), second.get("note")

    stream = iter(JsonlIterableDataset(str(tmp_path / "p{0,1}.jsonl"), pairs, 0, shuffle_buffer=1))
    assert [next(stream) for _ in range(3)] == [
        (0, 1, "p0.jsonl", None),
        (2, 3, "p1.jsonl", ""),
        (0, 1, "p0.jsonl", None),
    ]


def test_alter_dataset_mixes_by_weight_and_can_keep_batches_together():
    class Stream(torch.utils.data.IterableDataset):
        def __init__(self, tag):
            self.tag = tag

        def __iter__(self):
            while True:
                yield self.tag

    mixed = iter(AlterDataset([Stream("a"), Stream("b")], weights=[1, 4], seed=3))
    counts = collections.Counter(next(mixed) for _ in range(2000))
    assert 3.4 < counts["b"] / counts["a"] < 4.6
    runs = iter(AlterDataset([Stream("a"), Stream("b")], seed=3, batch_from_same_dataset=True, batch_size=4))
    batches = ["".join(next(runs) for _ in range(4)) for _ in range(50)]
    assert set(batches) == {"aaaa", "bbbb"}


def test_make_loaders_with_iterable_data(tmp_path, data_parallel):
    data_parallel(0, 1)
    _write_jsonl(tmp_path / "a.jsonl", range(10))
    _write_jsonl(tmp_path / "b.jsonl", range(100, 110))
    args = _args("--train-data", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--iterable-dataset")
    args.split = "1"
    train, _, _ = make_loaders(args, lambda path, a: JsonlIterableDataset(path, _values, a.seed))
    batch = next(iter(train))
    assert batch.shape == (4,)
    with pytest.raises(TypeError, match="must return a torch IterableDataset"):
        make_loaders(args, lambda path, a: Numbers(5))


# ----------------------------------------------------------------------------- HF datasets
def test_load_hf_dataset_from_local_files(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(["ab", "abc", "a"])))
    ds = load_hf_dataset(str(path), lambda r: {"length": len(r["text"])}, columns=["length", "label"])
    assert len(ds) == 3
    assert ds[1]["length"].item() == 3 and isinstance(ds[1]["label"], torch.Tensor)

    cache = tmp_path / "cache"
    kept = load_hf_dataset(
        "hf://" + str(path), lambda r: {"n": 1}, cache_dir=str(cache), transformer_name="t", columns=["n"]
    )
    saved = list(cache.glob("*_t.data"))
    assert len(saved) == 1 and kept[0]["n"].item() == 1
    # Reused (process_fn not called again) unless rebuild=True.
    assert load_hf_dataset("hf://" + str(path), None, cache_dir=str(cache), transformer_name="t")[2]["n"].item() == 1
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    assert load_hf_dataset(str(csv), lambda r: {"s": r["a"] + r["b"]}, columns=["s"])[1]["s"].item() == 7


def test_load_hf_dataset_keeps_one_saved_copy_per_whole_path(tmp_path):
    # Two sources whose last path part is the same ("validation.jsonl") must not share a copy.
    cache = tmp_path / "cache"
    for folder, text in (("a", "xy"), ("b", "wxyz")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "validation.jsonl").write_text(json.dumps({"text": text}) + "\n")
    lengths = [
        load_hf_dataset(
            str(tmp_path / folder / "validation.jsonl"),
            lambda r: {"n": len(r["text"])},
            cache_dir=str(cache),
            transformer_name="t",
        )[0]["n"].item()
        for folder in ("a", "b", "a")
    ]
    assert lengths == [2, 4, 2] and len(list(cache.glob("validation.jsonl-*_t.data"))) == 2
    hub = [saved_copy_path(p, "c", "t") for p in ("hf://super_glue/boolq/validation", "hf://glue/cola/validation")]
    assert hub == ["c/super_glue_boolq_validation_t.data", "c/glue_cola_validation_t.data"]
