"""Rotary position embedding (RoPE) in plain PyTorch.

The backbone's built-in rotary (``is_rotary_emb=True``) lives at
``transformer.position_embeddings`` and is applied to queries and keys inside attention.
"""

from __future__ import annotations

import torch


def rotate_with(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x [..., hn]`` in halves (the
    GPT-NeoX/LLaMA layout: channel ``i`` pairs with ``i + rot / 2``); the rest pass through.
    ``cos``/``sin`` hold each frequency twice, ``[..., rot]``."""
    rot = cos.shape[-1]
    x_rot = x if rot == x.shape[-1] else x[..., :rot]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


def pairs_to_halves(x: torch.Tensor) -> torch.Tensor:
    """``[..., 2n]`` laid out in adjacent pairs ``(x0, x1), (x2, x3)...`` -> halves
    ``[x0, x2, ...; x1, x3, ...]``, the layout ``rotate_with`` rotates."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def halves_to_pairs(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pairs_to_halves``."""
    return x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``rotate_with`` for the GPT-J/ChatGLM layout, where channel ``2i`` pairs with ``2i + 1``:
    ``cos``/``sin`` ``[..., rot / 2]`` hold each pair's frequency once; channels past ``rot``
    pass through."""
    rot = 2 * cos.shape[-1]
    halves = pairs_to_halves(x[..., :rot])  # [..., rot]
    rotated = halves_to_pairs(rotate_with(halves, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)))
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


def _cache_key(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple | None:
    """What ``cos``/``sin`` depend on: the very tensors (and their in-place version counters)
    and the dtype; ``None`` where a tensor keeps no version counter (inference mode)."""
    try:
        return (position_ids, position_ids._version, inv_freq, inv_freq._version, dtype)
    except RuntimeError:
        return None


def _same_key(a: tuple, b: tuple) -> bool:
    return a[0] is b[0] and a[1] == b[1] and a[2] is b[2] and a[3] == b[3] and a[4] == b[4]


class RotaryEmbedding(torch.nn.Module):
    """RoPE over the first ``dim`` channels of each head, with frequency base ``base``.

    ``interleaved``: rotate channel pairs ``(2i, 2i + 1)`` (GPT-J, ChatGLM) instead of
    ``(i, i + dim / 2)`` (GPT-NeoX, LLaMA). ``inv_freq`` is a persistent buffer, as in
    checkpoints of the original library.
    """

    def __init__(
        self, dim: int, base: float = 10000.0, device: torch.device | str | None = None, interleaved: bool = False
    ):
        super().__init__()
        self.dim = dim
        self.base = base
        self.interleaved = interleaved
        self.register_buffer("inv_freq", self._inv_freq(device))
        # Every layer rotates by the same position_ids in one forward: compute cos/sin once per
        # device (layers placed on several GPUs by a device_map each read their own copy).
        self._cached: dict[torch.device, tuple] = {}

    def _inv_freq(self, device=None) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))

    def reset_parameters(self) -> None:
        self.inv_freq = self._inv_freq(self.inv_freq.device)

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of shape ``[b or 1, 1, s, dim]`` (each frequency twice, as ``rotate_with``
        takes them) for ``position_ids [b, s]`` or ``[s]``."""
        key = _cache_key(position_ids, self.inv_freq, dtype)
        cached = self._cached.get(position_ids.device)
        if key is not None and cached is not None and _same_key(cached[0], key):
            return cached[1]
        positions = position_ids.unsqueeze(0) if position_ids.dim() == 1 else position_ids
        # Recompute rather than upcast when the model was cast to half precision. A layer on
        # another device than this module (a device_map over several GPUs) rotates on its own.
        if self.inv_freq.dtype == torch.float32:
            inv_freq = self.inv_freq.to(positions.device)
        else:
            inv_freq = self._inv_freq(positions.device)
        freqs = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [b, s, dim / 2]
        freqs = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [b, 1, s, dim]
        cos_sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
        if key is None:
            self._cached.pop(position_ids.device, None)
        else:
            self._cached[position_ids.device] = (key, cos_sin)
        return cos_sin

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
        cos, sin = self.cos_sin(position_ids, query.dtype)  # [b or 1, 1, s, dim]
        if not self.interleaved:
            return rotate_with(query, cos, sin), rotate_with(key, cos, sin)
        half = self.dim // 2  # cos_sin holds each frequency twice; the pair layout takes it once
        cos, sin = cos[..., :half], sin[..., :half]
        return rotate_interleaved(query, cos, sin), rotate_interleaved(key, cos, sin)
