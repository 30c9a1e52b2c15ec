"""Fixed 2-D sine-cosine position embeddings (MAE, ViT), as numpy arrays like the original's.

The original used ``np.float``, which numpy 1.24 removed; here it is float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """``[M, embed_dim]``: ``sin`` then ``cos`` of each position in ``pos`` (any shape, ``M``
    values) at ``embed_dim / 2`` frequencies ``10000 ** (-2i / embed_dim)``."""
    if embed_dim % 2:
        raise ValueError(f"sine-cosine embeddings need an even embed_dim, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))  # [D/2]
    out = np.outer(pos.reshape(-1), omega)  # [M, D/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D]


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid: np.ndarray) -> np.ndarray:
    """``[H*W, embed_dim]`` for ``grid [2, 1, H, W]``: half the channels encode ``grid[0]``,
    half ``grid[1]``."""
    if embed_dim % 2:
        raise ValueError(f"2-D sine-cosine embeddings need an even embed_dim, got {embed_dim}")
    emb_first = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # [H*W, D/2]
    emb_second = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # [H*W, D/2]
    return np.concatenate([emb_first, emb_second], axis=1)  # [H*W, D]


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: Sequence[int], pre_len: int, post_len: int) -> np.ndarray:
    """``[pre_len + H*W + post_len, embed_dim]`` for ``grid_size = (H, W)``, row-major over the
    grid (the first half of the channels encodes the column, the second the row), with
    ``pre_len`` and ``post_len`` zero rows around it (e.g. a class token)."""
    height, width = grid_size
    grid = np.stack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid.reshape(2, 1, height, width))
    return np.concatenate([np.zeros([pre_len, embed_dim]), pos_embed, np.zeros([post_len, embed_dim])], axis=0)
