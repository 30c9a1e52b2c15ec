"""Autograd-aware collectives that move activations in and out of the model-parallel region.

Each is the identity when model parallelism is off, so single-process code pays nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sat.mpu.initialize import (
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_world_size,
)
from sat.mpu.utils import split_tensor_along_last_dim


def _reduce(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x, group=get_model_parallel_group())
    return x


def _split(x: torch.Tensor) -> torch.Tensor:
    world_size = get_model_parallel_world_size()
    return split_tensor_along_last_dim(x, world_size)[get_model_parallel_rank()].contiguous()


def _gather(x: torch.Tensor) -> torch.Tensor:
    world_size = get_model_parallel_world_size()
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous(), group=get_model_parallel_group())
    return torch.cat(parts, dim=-1)


class _CopyToModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return _reduce(grad.clone())


class _ReduceFromModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _reduce(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ScatterToModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _split(x)

    @staticmethod
    def backward(ctx, grad):
        return _gather(grad)


class _GatherFromModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _gather(x)

    @staticmethod
    def backward(ctx, grad):
        return _split(grad)


def copy_to_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient backward."""
    return x if get_model_parallel_world_size() == 1 else _CopyToModelParallelRegion.apply(x)


def reduce_from_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) forward; identity backward."""
    return x if get_model_parallel_world_size() == 1 else _ReduceFromModelParallelRegion.apply(x)


def scatter_to_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Keep this rank's slice of the last dimension forward; all-gather backward."""
    return x if get_model_parallel_world_size() == 1 else _ScatterToModelParallelRegion.apply(x)


def gather_from_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """All-gather along the last dimension forward; keep this rank's slice backward."""
    return x if get_model_parallel_world_size() == 1 else _GatherFromModelParallelRegion.apply(x)
