"""Numerical building blocks: norms and attention kernels."""

from sat.ops.layernorm import LayerNorm, RMSNorm
from sat.ops.memory_efficient_attention import memory_efficient_attention

__all__ = ["LayerNorm", "RMSNorm", "memory_efficient_attention"]
