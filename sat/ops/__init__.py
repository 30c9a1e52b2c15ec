"""Numerical building blocks: norms and attention kernels."""

from sat.ops.layernorm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
