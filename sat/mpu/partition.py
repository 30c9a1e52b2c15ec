"""Splitting full weights into model-parallel shards and merging them back.

A fused weight such as attention's ``query_key_value`` stacks several blocks along the output
dimension (Q, K, V). Its ``stride`` says how: an int ``n`` means ``n`` equal blocks, a list
gives the blocks' relative sizes (``[heads, kv_heads, kv_heads]`` for grouped-query
attention). Each block is split evenly across ranks, and a rank's shard is its slice of every
block, concatenated: ``[Q_r; K_r; V_r]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sat.mpu.utils import divide

Stride = int | Sequence[int]


def block_sizes(total: int, stride: Stride) -> list[int]:
    """The sizes of the blocks of a fused dimension of size ``total`` laid out by ``stride``."""
    ratios = [1] * stride if isinstance(stride, int) else list(stride)
    factor = divide(total, sum(ratios))
    return [factor * ratio for ratio in ratios]


def split_strided(full: torch.Tensor, num_partitions: int, stride: Stride = 1, dim: int = 0) -> list[torch.Tensor]:
    """The ``num_partitions`` shards of ``full`` along ``dim`` (see the module docstring)."""
    blocks = torch.split(full, block_sizes(full.size(dim), stride), dim=dim)
    per_block = [torch.chunk(block, num_partitions, dim=dim) for block in blocks]
    for block, parts in zip(blocks, per_block):
        if len(parts) != num_partitions or block.size(dim) % num_partitions:
            raise ValueError(
                f"cannot split a block of size {block.size(dim)} (dim {dim} of a {tuple(full.shape)} "
                f"tensor, stride {stride}) evenly into {num_partitions} partitions"
            )
    return [torch.cat([parts[rank] for parts in per_block], dim=dim).clone() for rank in range(num_partitions)]


def merge_strided(shards: Sequence[torch.Tensor], stride: Stride = 1, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`split_strided`: rebuild the full tensor from every rank's shard."""
    per_shard = [torch.split(shard, block_sizes(shard.size(dim), stride), dim=dim) for shard in shards]
    num_blocks = len(per_shard[0])
    return torch.cat([torch.cat([blocks[b] for blocks in per_shard], dim=dim) for b in range(num_blocks)], dim=dim)


def mark_partitioned(param: torch.nn.Parameter, dim: int, stride: Stride = 1) -> torch.nn.Parameter:
    """Record that ``param`` is this rank's shard along ``dim`` (with ``stride`` blocks); used by
    resharding, DeepSpeed and the training code. Mixins with parallel parameters call this."""
    param.model_parallel = True
    param.tensor_model_parallel = True
    param.partition_dim = dim
    param.partition_stride = stride
    return param


def mark_replicated(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """Record that every model-parallel rank holds all of ``param``."""
    param.model_parallel = False
    param.tensor_model_parallel = False
    return param


def partition_spec(param: torch.Tensor) -> tuple[int, Stride] | None:
    """``(dim, stride)`` of a partitioned parameter, ``None`` for a replicated one."""
    if getattr(param, "tensor_model_parallel", False):
        return param.partition_dim, param.partition_stride
    return None
