"""Attention mixins: SDPA (memory-efficient attention) as an explicit choice."""

from sat.model.attention.memory_efficient_attention import (
    MemoryEfficientAttentionMixin,
    TransposedMemoryEfficientAttentionMixin,
    memory_efficient_attention,
)

__all__ = ["MemoryEfficientAttentionMixin", "TransposedMemoryEfficientAttentionMixin", "memory_efficient_attention"]
