"""The original's ChatGLM rotary helpers: a ``[s, rot / 2, 2]`` table of ``(cos, sin)`` per
position and frequency, applied in the pair layout (channel ``2i`` with ``2i + 1``) to the
first ``rot`` channels, over ``rotary.rotate_interleaved``."""

from __future__ import annotations

import torch

from sat.model.position_embedding.rotary import rotate_interleaved


class RotaryEmbedding(torch.nn.Module):
    """``forward(max_seq_len)`` -> the ``[max_seq_len, dim / 2, 2]`` table for frequencies
    ``(10000 base_scale) ** (-2i / dim)``; kept in half precision when ``dtype`` is fp16 or
    bf16 (ChatGLM's complex32 emulation). ``original_impl`` is accepted for compatibility."""

    def __init__(self, dim: int, original_impl: bool = False, device=None, dtype=None, base_scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.base_scale = base_scale
        self.original_impl = original_impl
        exponents = torch.arange(0, dim, 2, device=device).to(dtype=dtype) / dim
        self.register_buffer("inv_freq", 1.0 / ((10000 * base_scale) ** exponents))
        self.cache: torch.Tensor | None = None

    def forward(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        if self.cache is None or max_seq_len > self.cache.shape[0]:
            positions = torch.arange(max_seq_len, dtype=torch.float32, device=self.inv_freq.device)
            angles = torch.outer(positions, self.inv_freq.float())  # [s, dim / 2]
            cache = torch.stack((angles.cos(), angles.sin()), dim=-1)  # [s, dim / 2, 2]
            if self.inv_freq.dtype in (torch.float16, torch.bfloat16):
                cache = cache.to(self.inv_freq.dtype)
            self.cache = cache
        return self.cache[:max_seq_len]


def apply_rotary_pos_emb(x: torch.Tensor, rope_cache: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [sq, b, np, hn]`` by ``rope_cache [>= sq, b or 1, rot / 2, 2]``."""
    sq = x.shape[0]
    rope_cache = rope_cache[:sq].to(x.device)  # the table may sit on the trunk's device, x on its layer's
    rope_cache = rope_cache.reshape(sq, -1, 1, rope_cache.shape[-2], 2)  # [sq, b, 1, rot / 2, 2]
    return rotate_interleaved(x, rope_cache[..., 0], rope_cache[..., 1])


def apply_rotary_pos_emb_bhs(x: torch.Tensor, rope_cache: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [b, np, sq, hn]`` by ``rope_cache [b or 1, >= sq, rot / 2, 2]`` (e.g. the
    table indexed by ``position_ids [b, s]``)."""
    sq = x.shape[2]
    rope_cache = rope_cache[:, :sq].to(x.device)  # the table may sit on the trunk's device, x on its layer's
    rope_cache = rope_cache.reshape(-1, 1, sq, rope_cache.shape[-2], 2)  # [b, 1, sq, rot / 2, 2]
    return rotate_interleaved(x, rope_cache[..., 0], rope_cache[..., 1])
