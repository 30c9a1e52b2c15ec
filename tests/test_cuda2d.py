"""Cuda2dModel (CogView2): the pure-PyTorch 2-D local attention against an explicit loop, and the model."""

from __future__ import annotations

import pytest
import torch

from sat.ops.local_attention import OUT_OF_GRID_SCORE, local_similarity, local_weighting


def _window(kernel_h: int, kernel_w: int, causal: bool) -> list[tuple[int, int]]:
    """Window offsets (dy, dx) in raster order; causal keeps those up to the centre."""
    offsets = [(ky - kernel_h // 2, kx - kernel_w // 2) for ky in range(kernel_h) for kx in range(kernel_w)]
    return offsets[: kernel_h * kernel_w // 2 + 1] if causal else offsets


def _loop_attention(q, k, v, kernel_h, kernel_w, causal):
    """Scores and outputs query by query, offset by offset, channel by channel."""
    b, c, fine_h, fine_w = q.shape
    h, w = k.shape[2:]
    offsets = _window(kernel_h, kernel_w, causal)
    probs = torch.softmax(torch.randn(b, fine_h, fine_w, len(offsets), dtype=q.dtype), dim=-1)
    scores = torch.empty(b, fine_h, fine_w, len(offsets), dtype=q.dtype)
    out = torch.zeros(b, c, fine_h, fine_w, dtype=q.dtype)
    for n in range(b):
        for i in range(fine_h):
            for j in range(fine_w):
                ci, cj = i // (fine_h // h), j // (fine_w // w)
                for t, (dy, dx) in enumerate(offsets):
                    y, x = ci + dy, cj + dx
                    if not (0 <= y < h and 0 <= x < w):
                        scores[n, i, j, t] = OUT_OF_GRID_SCORE
                        continue
                    scores[n, i, j, t] = sum(q[n, ch, i, j] * k[n, ch, y, x] for ch in range(c))
                    for ch in range(c):
                        out[n, ch, i, j] += probs[n, i, j, t] * v[n, ch, y, x]
    return scores, probs, out


@pytest.mark.parametrize(
    ("fine", "coarse", "kernel_h", "kernel_w", "causal"),
    [((5, 5), (5, 5), 5, 3, True), ((4, 6), (4, 6), 3, 3, False), ((6, 4), (3, 2), 3, 3, False)],
)
def test_local_attention_matches_loop(fine, coarse, kernel_h, kernel_w, causal):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, *fine, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 3, *coarse, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, *coarse, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    scores_ref, probs, out_ref = _loop_attention(q, k, v, kernel_h, kernel_w, causal)
    scores = local_similarity(q, k, kernel_h, kernel_w, causal)
    out = local_weighting(v, probs, kernel_h, kernel_w, causal)
    assert scores.shape == scores_ref.shape
    assert (scores - scores_ref).abs().max() <= 1e-6
    assert (out - out_ref).abs().max() <= 1e-6


def test_local_attention_causal_sees_only_the_past():
    q = torch.randn(1, 2, 4, 4, requires_grad=True)
    k = torch.randn(1, 2, 4, 4, requires_grad=True)
    scores = local_similarity(q, k, 5, 3, causal=True)  # [1, 4, 4, 8]
    assert scores.shape == (1, 4, 4, 8)
    scores[0, 1, 1].sum().backward()
    # Query (1, 1) reads keys of rows 0..1, columns 0..2, and on row 1 only columns 0..1.
    touched = (k.grad[0].abs().sum(0) > 0).int().tolist()
    assert touched == [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_local_attention_bad_sizes():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="odd kernel sizes"):
        local_similarity(x, x, 4, 3, causal=True)
    with pytest.raises(ValueError, match="not a multiple"):
        local_similarity(torch.zeros(1, 1, 5, 4), x, 3, 3)
