"""The launchers the original's example scripts use: `python -m torch.distributed.launch` passes
`--local-rank=N` (torch 2), the deepspeed launcher `--local_rank=N` and ranks per node as
LOCAL_SIZE (torchrun as LOCAL_WORLD_SIZE); a plain `python transform_param.py` with a
one-process group has nothing to guess."""

from __future__ import annotations

import logging
import os

import pytest
import torch.distributed as dist

from sat import get_args, mpu
from sat.helpers import get_free_port
from tests.distributed import run_workers


def _two_nodes_by_deepspeed_launcher(rank: int, world_size: int) -> list[int]:
    os.environ.pop("LOCAL_WORLD_SIZE", None)
    os.environ["LOCAL_SIZE"] = "1"  # what `deepspeed --hostfile` sets for one rank per node
    mpu.initialize_model_parallel(1)
    return [mpu.get_node_world_size(), mpu.get_node_rank(), mpu.get_node_src_rank()]


@pytest.mark.multiprocess
def test_deepspeed_launcher_local_size_sets_the_node_groups():
    # Without LOCAL_SIZE both CPU ranks would be taken for one node (node world size 2).
    assert run_workers(_two_nodes_by_deepspeed_launcher, 2) == [[1, 0, 0], [1, 0, 1]]


def test_single_process_group_warns_about_nothing(monkeypatch, caplog):
    for variable in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{get_free_port()}")
    try:
        with caplog.at_level(logging.DEBUG):
            mpu.initialize_model_parallel(1)
        assert mpu.get_node_world_size() == 1
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        mpu.destroy_model_parallel()
        dist.destroy_process_group()


def test_get_args_takes_both_spellings_of_the_local_rank_flag():
    assert get_args(["--local-rank=3"]).local_rank == 3  # torch.distributed.launch
    assert get_args(["--local_rank=2"]).local_rank == 2  # deepspeed launcher
