"""Normalisation layers used by the backbone (``layernorm=`` argument)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` that computes in fp32 for half-precision inputs on CPU, where
    half-precision normalisation loses accuracy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        return super().forward(x)


class RMSNorm(torch.nn.Module):
    """Root-mean-square norm (LLaMA, T5's layer norm): ``weight * x / sqrt(mean(x^2) + eps)``,
    the statistics computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.variance_epsilon = eps

    @property
    def eps(self) -> float:
        return self.variance_epsilon

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # The same formula in torch's fused kernel: fewer temporaries, faster backward.
            return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)
        input_dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


NO_WD_MODULES: list[type[torch.nn.Module]] = [LayerNorm, torch.nn.LayerNorm, RMSNorm]
"""The norm classes; the optimizer gives their parameters no weight decay (the original's list)."""
