"""Small helpers for tensor model parallelism: divisibility, splits and init methods."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

InitMethod = Callable[..., torch.Tensor]


def ensure_divisibility(numerator: int, denominator: int) -> None:
    """Raise a ValueError naming both numbers unless ``numerator % denominator == 0``."""
    if numerator % denominator != 0:
        raise ValueError(f"{numerator} is not divisible by {denominator}")


def divide(numerator: int, denominator: int) -> int:
    """``numerator // denominator``, checking that the division is exact."""
    ensure_divisibility(numerator, denominator)
    return numerator // denominator


def split_tensor_along_last_dim(
    tensor: torch.Tensor, num_partitions: int | Sequence[int], contiguous_split_chunks: bool = False
) -> tuple[torch.Tensor, ...]:
    """Split the last dimension into ``num_partitions`` equal chunks, or into chunks in the
    given ratios when ``num_partitions`` is a list (e.g. ``[heads, kv_heads, kv_heads]``)."""
    last = tensor.size(-1)
    if isinstance(num_partitions, int):
        chunks = torch.split(tensor, divide(last, num_partitions), dim=-1)
    else:
        factor = divide(last, sum(num_partitions))
        chunks = torch.split(tensor, [factor * ratio for ratio in num_partitions], dim=-1)
    if contiguous_split_chunks:
        return tuple(chunk.contiguous() for chunk in chunks)
    return chunks


class VocabUtility:
    """The range ``[first, last)`` of vocabulary ids that partition ``rank`` holds."""

    @staticmethod
    def vocab_range_from_per_partition_vocab_size(
        per_partition_vocab_size: int, rank: int, world_size: int
    ) -> tuple[int, int]:
        """``world_size`` is unused, kept for the original's signature."""
        first = rank * per_partition_vocab_size
        return first, first + per_partition_vocab_size

    @staticmethod
    def vocab_range_from_global_vocab_size(global_vocab_size: int, rank: int, world_size: int) -> tuple[int, int]:
        per_partition = divide(global_vocab_size, world_size)
        return VocabUtility.vocab_range_from_per_partition_vocab_size(per_partition, rank, world_size)


def unscaled_init_method(sigma: float) -> InitMethod:
    """Init method drawing from N(0, sigma)."""

    def init_(tensor: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=sigma)

    return init_


def scaled_init_method(sigma: float, num_layers: int) -> InitMethod:
    """Init method drawing from N(0, sigma / sqrt(2 * num_layers)), for residual outputs."""
    std = sigma / math.sqrt(2.0 * num_layers)

    def init_(tensor: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=std)

    return init_


def gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI's GELU (tanh approximation), the backbone's default activation."""
    return F.gelu(x, approximate="tanh")
