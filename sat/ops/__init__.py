"""Numerical building blocks: norms, attention kernels and the EMA optimizer."""

from sat.ops.fused_ema_adam import FusedEmaAdam
from sat.ops.layernorm import LayerNorm, RMSNorm
from sat.ops.memory_efficient_attention import memory_efficient_attention

__all__ = ["FusedEmaAdam", "LayerNorm", "RMSNorm", "memory_efficient_attention"]
