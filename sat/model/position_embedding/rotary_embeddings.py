"""The original's GPT-NeoX rotary helpers: a cos/sin table and functions applying it.

They work on sequence-first tensors (the original's layout: ``[s, b np, hn]``, or
``[s, b, np, hn]`` with ``position_id``) and tables ``[s, 1, hn]``. The ``_fused`` variants
needed a CUDA extension there; here they are the same PyTorch computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model.position_embedding.rotary import RotaryEmbedding as _RotaryBase
from sat.model.position_embedding.rotary import rotate_with


class RotaryEmbedding(_RotaryBase):
    """``forward(x, seq_dim=1, seq_len=None)`` -> ``cos, sin`` tables ``[seq_len, 1, dim]`` in
    ``x``'s dtype, for the ``apply_rotary_pos_emb*`` functions. ``learnable`` makes
    ``inv_freq`` a parameter. ``precision`` is accepted for compatibility: the table is always
    computed in fp32. As in the original, loading a checkpoint leaves ``inv_freq`` as built."""

    def __init__(self, dim, base=10000, precision=torch.half, learnable=False, device=torch.device("cpu")):
        super().__init__(dim, base=base, device=device)
        self.precision = precision
        self.learnable = learnable
        if learnable:
            inv_freq = self.inv_freq
            del self.inv_freq
            self.inv_freq = torch.nn.Parameter(inv_freq)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        pass  # inv_freq follows from dim and base; old checkpoints' copies are ignored

    def forward(self, x: torch.Tensor, seq_dim: int = 1, seq_len: int | None = None):
        seq_len = x.shape[seq_dim] if seq_len is None else seq_len
        positions = torch.arange(seq_len, device=x.device)
        freqs = positions.float()[:, None] * self.inv_freq.float().to(x.device)  # [s, dim / 2]; x may be a layer's GPU
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [s, 1, dim]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1; x2]`` -> ``[-x2; x1]`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb_torch(q, k, cos, sin, offset: int = 0):
    """Rotate ``q``/``k [s, b np, hn]`` by table rows ``offset .. offset + s`` (broadcast)."""
    cos, sin = cos[offset : q.shape[0] + offset], sin[offset : q.shape[0] + offset]  # [s, 1, hn]
    return rotate_with(q, cos, sin), rotate_with(k, cos, sin)


def apply_rotary_pos_emb_index_single(q, cos, sin, position_id):
    """Rotate ``q [s, b, np, hn]`` by the table rows ``position_id [s, b]``."""
    cos = F.embedding(position_id, cos.squeeze(1)).unsqueeze(2)  # [s, b, 1, hn]
    sin = F.embedding(position_id, sin.squeeze(1)).unsqueeze(2)
    return rotate_with(q, cos, sin)


def apply_rotary_pos_emb_index_torch(q, k, cos, sin, position_id):
    """Rotate ``q``/``k [s, b, np, hn]`` by the table rows ``position_id [s, b]``."""
    return (
        apply_rotary_pos_emb_index_single(q, cos, sin, position_id),
        apply_rotary_pos_emb_index_single(k, cos, sin, position_id),
    )


apply_rotary_pos_emb = apply_rotary_pos_emb_fused = apply_rotary_pos_emb_torch
apply_rotary_pos_emb_index = apply_rotary_pos_emb_index_fused = apply_rotary_pos_emb_index_torch
