"""``from_pretrained(..., from_rank0=True)`` on 2 processes (gloo): only global rank 0 opens the
checkpoint's files (an audit hook records every file each rank opens or lists), every rank ends
with the checkpoint's exact tensors, and at model-parallel size 2 each rank holds the shard a
normal load gives it (resharded from an MP1 checkpoint, and read from an MP2 one)."""

from __future__ import annotations

import mmap
import os
import sys

import pytest
import torch
from distributed import run_workers

from sat import mpu
from sat.checkpoint import CheckpointError, broadcast
from sat.checkpoint.page_release import PRESENT, page_flags
from sat.model import AutoModel, BaseModel
from sat.model.official import GPT2Model
from sat.training.model_io import save_checkpoint

pytestmark = pytest.mark.multiprocess

_FILE_EVENTS = ("open", "os.listdir", "os.scandir")


def _spy(root: str) -> list[str]:
    """Every path under ``root`` this process opens or lists from now on (``sys.addaudithook``:
    Python's ``open``, ``os.open``, ``torch.load``'s file and ``os.listdir`` all raise these)."""
    seen: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event in _FILE_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(root):
                seen.append(f"{event} {path}")

    sys.addaudithook(hook)
    return seen


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _worker(rank: int, world: int, root: str) -> dict:
    mp1, mp2 = os.path.join(root, "mp1"), os.path.join(root, "mp2")
    opened = _spy(root)
    result: dict = {}
    model, args = AutoModel.from_pretrained(mp1, from_rank0=True)  # the class too comes from rank 0
    result["mp1"], result["mp1 opened"] = _state(model), list(opened)
    result["mp1 args"] = (args.num_layers, args.hidden_size, args.model_parallel_size)
    result["meta"] = any(p.is_meta for p in model.parameters())
    result["class"] = type(model).__name__

    split = {"model_parallel_size": 2}
    normal, normal_args = GPT2Model.from_pretrained(mp1, overwrite_args=split)  # every rank reads
    normal_args.save = mp2
    save_checkpoint(5, normal, None, None, normal_args)
    result["normal mp2"] = _state(normal)
    opened.clear()
    resharded, _ = GPT2Model.from_pretrained(mp1, overwrite_args=split, from_rank0=True)
    saved_mp2, _ = GPT2Model.from_pretrained(mp2, from_rank0=True)
    result["resharded"], result["saved mp2"], result["mp2 opened"] = _state(resharded), _state(saved_mp2), opened
    result["mp rank"] = mpu.get_model_parallel_rank()
    try:
        BaseModel.from_pretrained(os.path.join(root, "missing"), from_rank0=True)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    return result


def test_only_rank0_opens_files_and_every_rank_gets_its_exact_part(tmp_path):
    torch.manual_seed(0)
    args = GPT2Model.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, max_sequence_length=32
    )
    model = GPT2Model(args)
    args.save = str(tmp_path / "mp1")
    save_checkpoint(3, model, None, None, args)
    os.makedirs(tmp_path / "missing")
    expected = model.state_dict()

    results = run_workers(_worker, 2, str(tmp_path))
    root = str(tmp_path)
    for rank, result in enumerate(results):
        assert result["mp1 args"] == (2, 32, 1) and not result["meta"] and result["class"] == "GPT2Model"
        assert result["mp1"].keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(result["mp1"][key], value), (rank, key)
        assert result["mp rank"] == rank
        for key, value in result["normal mp2"].items():
            assert torch.equal(result["resharded"][key], value), (rank, key)
            assert torch.equal(result["saved mp2"][key], value), (rank, key)
        assert "rank 0 failed to read the checkpoint" in result["error"] or rank == 0, result["error"]
        assert "model_config.json" in result["error"], result["error"]
    # Rank 0 read model_config.json, latest and the shard files; rank 1 touched nothing.
    assert any("mp1/3/mp_rank_00_model_states.pt" in path for path in results[0]["mp1 opened"])
    assert any("mp1/model_config.json" in path for path in results[0]["mp1 opened"])
    assert any("mp2/5/mp_rank_01_model_states.pt" in path for path in results[0]["mp2 opened"])
    assert results[1]["mp1 opened"] == [] and results[1]["mp2 opened"] == [], root


def _resident_pages(tensor: torch.Tensor) -> int:
    """How many whole pages of a dense CPU ``tensor``'s memory are in this process's resident set."""
    begin = tensor.data_ptr()
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (begin + tensor.numel() * tensor.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return 0
    return sum(1 for flags in page_flags(first, last) if flags & PRESENT)


def _sent_pages_worker(rank: int, world: int, root: str) -> dict:
    mp1, mp2 = os.path.join(root, "mp1"), os.path.join(root, "mp2")
    split, split_args = GPT2Model.from_pretrained(mp1, overwrite_args={"model_parallel_size": 2})
    split_args.save, split_args.checkpoint_format = mp2, "safetensors"
    save_checkpoint(1, split, None, None, split_args)
    expected = _state(split)
    sent: list[tuple[int, int]] = []  # (whole pages, resident after the send) of each tensor sent away
    transfer = broadcast._Route.transfer

    def spying_transfer(route, targets, buffer, comm):
        transfer(route, targets, buffer, comm)
        for destination in route.sends if targets is not None else []:
            tensor = targets[destination]
            pages = tensor.numel() * tensor.element_size() // mmap.PAGESIZE
            sent.append((pages, _resident_pages(tensor)))

    broadcast._Route.transfer = spying_transfer
    loaded, _ = GPT2Model.from_pretrained(mp2, from_rank0=True)
    return {"sent": sent, "equal": all(torch.equal(v, expected[k]) for k, v in _state(loaded).items())}


def test_rank0_keeps_no_page_of_the_shards_it_sent(tmp_path):
    """At model-parallel size 2, rank 0 reads both ranks' files and sends rank 1 its shard; once
    sent, no whole page of it stays in rank 0's resident set (the file's pages are released)."""
    args = GPT2Model.get_args(
        num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=4096, max_sequence_length=32
    )
    args.save = str(tmp_path / "mp1")
    save_checkpoint(1, GPT2Model(args), None, None, args)
    results = run_workers(_sent_pages_worker, 2, str(tmp_path))
    assert results[0]["equal"] and results[1]["equal"]
    sent = results[0]["sent"]
    assert sum(pages for pages, _ in sent) >= 4096 // 2 * 64 * 4 // mmap.PAGESIZE  # at least rank 1's embedding shard
    assert [resident for _, resident in sent] == [0] * len(sent)
    assert results[1]["sent"] == []
