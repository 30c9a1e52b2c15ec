"""2-D local attention in pure PyTorch (CogView2's ``f_similar`` / ``f_weighting``).

Queries lie on an ``H x W`` grid and keys/values on an ``h x w`` grid with ``H = ah * h`` and
``W = aw * w``: the query at ``(i, j)`` sees the ``kernel_h x kernel_w`` window of keys centred on
``(i // ah, j // aw)``, the window's offsets read in raster order. ``causal`` keeps the offsets up
to and including the centre (``kernel_h * kernel_w // 2 + 1`` of them, so both sizes must be odd):
the rows above and the keys to the left on the query's own row. Window positions outside the
grid score ``OUT_OF_GRID_SCORE`` (as the CUDA extension did), so a softmax gives them no weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["OUT_OF_GRID_SCORE", "local_similarity", "local_weighting", "window_size"]

OUT_OF_GRID_SCORE = -10000.0


def window_size(kernel_h: int, kernel_w: int, causal: bool) -> int:
    """Number of window offsets each query sees."""
    if causal and (kernel_h % 2 == 0 or kernel_w % 2 == 0):
        raise ValueError(f"causal local attention needs odd kernel sizes, got {kernel_h}x{kernel_w}")
    return kernel_h * kernel_w // 2 + 1 if causal else kernel_h * kernel_w


def _windows(x: torch.Tensor, fine_hw: tuple[int, int], kernel_h: int, kernel_w: int, causal: bool) -> torch.Tensor:
    """The windows of ``x`` [B, C, h, w] seen from each fine position: [B, C, patch, H, W]."""
    b, c, h, w = x.shape
    fine_h, fine_w = fine_hw
    if fine_h % h or fine_w % w:
        raise ValueError(f"the query grid {fine_h}x{fine_w} is not a multiple of the key grid {h}x{w}")
    patch = window_size(kernel_h, kernel_w, causal)
    # Offsets run from -(k // 2) to k - 1 - k // 2 (as the extension's), even sizes included.
    rh, rw = kernel_h // 2, kernel_w // 2
    padded = F.pad(x, (rw, kernel_w - 1 - rw, rh, kernel_h - 1 - rh))  # [B, C, h+kh-1, w+kw-1]
    cols = F.unfold(padded, (kernel_h, kernel_w))  # [B, C*kh*kw, h*w]
    cols = cols.view(b, c, kernel_h * kernel_w, h, w)[:, :, :patch]  # [B, C, patch, h, w]
    # Each key-grid position serves an ah x aw block of queries.
    return cols.repeat_interleave(fine_h // h, dim=3).repeat_interleave(fine_w // w, dim=4)  # [B, C, patch, H, W]


def local_similarity(
    query: torch.Tensor, key: torch.Tensor, kernel_h: int, kernel_w: int, causal: bool = False
) -> torch.Tensor:
    """Scores of each query [B, C, H, W] against its key window (key [B, C, h, w]): [B, H, W, patch]."""
    b, _, fine_h, fine_w = query.shape
    keys = _windows(key, (fine_h, fine_w), kernel_h, kernel_w, causal)  # [B, C, patch, H, W]
    scores = torch.einsum("bchw,bckhw->bhwk", query, keys)  # [B, H, W, patch]
    inside = _windows(key.new_ones(1, 1, *key.shape[2:]), (fine_h, fine_w), kernel_h, kernel_w, causal)
    inside = inside[0, 0].permute(1, 2, 0).bool()  # [H, W, patch]
    return scores.masked_fill(~inside, OUT_OF_GRID_SCORE)


def local_weighting(
    value: torch.Tensor, weights: torch.Tensor, kernel_h: int, kernel_w: int, causal: bool = False
) -> torch.Tensor:
    """Sum of the value window (value [B, C, h, w]) by the weights [B, H, W, patch]: [B, C, H, W]."""
    fine_h, fine_w = weights.shape[1:3]
    values = _windows(value, (fine_h, fine_w), kernel_h, kernel_w, causal)  # [B, C, patch, H, W]; 0 off-grid
    return torch.einsum("bckhw,bhwk->bchw", values, weights)  # [B, C, H, W]
