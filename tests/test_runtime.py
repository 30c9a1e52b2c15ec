"""sat.runtime: device and dtype from args, ZeRO-3 detection, and which calls may start a
process group (building a model never does)."""

from __future__ import annotations

import argparse

import pytest
import torch

from sat.runtime import (
    assign_device,
    check_if_zero3,
    dtype_from_args,
    init_device,
    is_zero3_partitioned,
    require_model_parallel,
    resolve_device,
)


def test_device_resolution_and_its_public_form():
    cuda = torch.cuda.is_available()
    assert resolve_device(argparse.Namespace(device="cpu")) == torch.device("cpu")
    assert resolve_device(argparse.Namespace(device=1)) == torch.device("cuda", 1)
    assert resolve_device(argparse.Namespace(device="cuda:2")) == torch.device("cuda", 2)
    unset = resolve_device(argparse.Namespace(device=-1, local_rank=0))
    assert unset == (torch.device("cuda", 0) if cuda else torch.device("cpu"))
    args = argparse.Namespace(device="cuda:3")
    assert assign_device(args) == torch.device("cuda", 3) and args.device == 3  # an index, as scripts compare
    args = argparse.Namespace()
    assign_device(args)
    assert args.device == (torch.cuda.current_device() if cuda else "cpu")


def test_init_device_is_cpu_unless_gpu_initialization():
    assert init_device(argparse.Namespace(device="cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            init_device(argparse.Namespace(use_gpu_initialization=True))


def test_dtype_from_args():
    assert dtype_from_args(argparse.Namespace()) is torch.float32
    assert dtype_from_args(argparse.Namespace(fp16=True, bf16=False)) is torch.half
    assert dtype_from_args(argparse.Namespace(fp16=False, bf16=True)) is torch.bfloat16


def test_zero3_detection():
    assert check_if_zero3(argparse.Namespace(deepspeed_config={"zero_optimization": {"stage": 3}}))
    assert not check_if_zero3(argparse.Namespace(deepspeed_config={"zero_optimization": {"stage": 2}}))
    assert check_if_zero3(argparse.Namespace(zero_stage=3, deepspeed=True))
    assert not check_if_zero3(argparse.Namespace(zero_stage=3, deepspeed=False))
    module = torch.nn.Linear(2, 2)
    assert not is_zero3_partitioned(module)
    module.weight.ds_id = 0  # what deepspeed.zero.Init tags a partitioned parameter with
    assert is_zero3_partitioned(module)


def test_require_model_parallel_never_starts_a_process_group():
    require_model_parallel(1)  # size 1: nothing to set up
    with pytest.raises(RuntimeError, match="from_pretrained"):
        require_model_parallel(2)
    assert not torch.distributed.is_initialized()


def test_simple_init_of_the_original_seeds_and_starts_nothing_at_mp1():
    import random

    from sat.arguments import _simple_init

    assert _simple_init(model_parallel_size=1, seed=5) is False
    first = (random.random(), torch.rand(1))
    _simple_init(seed=5)
    assert (random.random(), torch.rand(1)) == first
    assert not torch.distributed.is_initialized()
    assert _simple_init() is False  # seed 0, the original's default, seeds nothing
