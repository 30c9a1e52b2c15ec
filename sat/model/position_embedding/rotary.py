"""Rotary position embedding (RoPE) in plain PyTorch.

The backbone's built-in rotary (``is_rotary_emb=True``) lives at
``transformer.position_embeddings`` and is applied to queries and keys inside attention.
"""

from __future__ import annotations

import torch


def rotate_with(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of ``x [..., hn]`` in halves (the
    GPT-NeoX/LLaMA layout); the remaining channels pass through."""
    rot = 2 * cos.shape[-1]
    x1, x2, rest = x[..., : rot // 2], x[..., rot // 2 : rot], x[..., rot:]
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


class RotaryEmbedding(torch.nn.Module):
    """RoPE over the first ``dim`` channels of each head, with frequency base ``base``.

    ``inv_freq`` is a persistent buffer, as in checkpoints of the original library.
    """

    def __init__(self, dim: int, base: float = 10000.0, device: torch.device | str | None = None):
        super().__init__()
        self.dim = dim
        self.base = base
        self.register_buffer("inv_freq", self._inv_freq(device))

    def _inv_freq(self, device=None) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))

    def reset_parameters(self) -> None:
        self.inv_freq = self._inv_freq(self.inv_freq.device)

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of shape ``[b or 1, 1, s, dim / 2]`` for ``position_ids [b, s]`` or ``[s]``."""
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        # Recompute rather than upcast when the model was cast to half precision.
        inv_freq = self.inv_freq if self.inv_freq.dtype == torch.float32 else self._inv_freq(position_ids.device)
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # [b, s, dim / 2]
        freqs = freqs.unsqueeze(1)  # [b, 1, s, dim / 2]
        return freqs.cos().to(dtype), freqs.sin().to(dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        position_ids: torch.Tensor,
        max_seqlen: int | None = None,
        layer_id: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``query [b, np, s, hn]`` and ``key [b, nkv, s, hn]`` by ``position_ids``.

        ``max_seqlen`` and ``layer_id`` are accepted for compatibility and not needed.
        """
        cos, sin = self.cos_sin(position_ids, query.dtype)
        return rotate_with(query, cos, sin), rotate_with(key, cos, sin)
