"""GLM's 2-D rotary embedding (ChatGLM-6B; GLM-130B with ``--position-encoding-2d``).

GLM gives each token two positions (``position_ids [b, 2, s]``): its place in the text and its
place inside the blank being filled (the block position). The 2-D rotary rotates the first half
of each head's channels by the first and the second half by the second, each half in the
GPT-NeoX layout (channel ``i`` with ``i + hn / 4``).
"""

from __future__ import annotations

import torch

from sat.model.position_embedding.rotary import RotaryEmbedding, rotate_with


def rotate_2d(
    rotary: RotaryEmbedding, query: torch.Tensor, key: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``query [b, np, s, hn]`` and ``key [b, nkv, s, hn]`` by ``position_ids [b, 2, s]``;
    ``rotary`` covers ``hn / 2`` channels."""
    if position_ids.dim() != 3 or position_ids.shape[1] != 2:
        raise ValueError(
            f"the 2-D rotary needs position_ids [b, 2, s] (positions, block positions), got {tuple(position_ids.shape)}"
        )
    tables = [rotary.cos_sin(position_ids[:, row], query.dtype) for row in range(2)]  # ([b, 1, s, hn/2],) x 2

    def rotate(x: torch.Tensor) -> torch.Tensor:
        halves = x.chunk(2, dim=-1)  # [b, n, s, hn / 2] x 2
        return torch.cat([rotate_with(half, *table) for half, table in zip(halves, tables)], dim=-1)

    return rotate(query), rotate(key)
