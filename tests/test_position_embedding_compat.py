"""The original's position-embedding modules: rotary helpers, FastRotaryEmbedding, 2-D
sine-cosine tables and EVA's vision rotary, checked against direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sat.model.position_embedding import FastRotaryEmbedding, get_2d_sincos_pos_embed
from sat.model.position_embedding.rotary_embeddings import (
    RotaryEmbedding,
    apply_rotary_pos_emb,
    apply_rotary_pos_emb_index,
    rotate_half,
)
from sat.model.position_embedding.rotary_embeddings_original import RotaryEmbedding as GLMRotary
from sat.model.position_embedding.rotary_embeddings_original import apply_rotary_pos_emb as apply_sbh
from sat.model.position_embedding.rotary_embeddings_original import apply_rotary_pos_emb_bhs
from sat.model.position_embedding.vision_rotary_embeddings import VisionRotaryEmbedding, VisionRotaryEmbeddingFast


def _rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Reference: channel pairs ``(2i, 2i + 1)`` rotated by ``angles[..., i]``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


def test_rotary_table_and_apply():
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 6, 8).unbind(0)  # [s, b np, hn]
    cos, sin = RotaryEmbedding(8)(q, seq_dim=0)
    assert cos.shape == (5, 1, 8)
    angle = 3 / 10000 ** (2 / 8)  # position 3, frequency 1
    assert cos[3, 0, 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    rq, rk = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(rq, q * cos + rotate_half(q) * sin)
    torch.testing.assert_close(rk, k * cos + rotate_half(k) * sin)


def test_rotary_index_takes_rows_by_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 2, 3, 8).unbind(0)  # [s, b, np, hn]
    cos, sin = RotaryEmbedding(8)(q, seq_len=10)
    positions = torch.tensor([[0, 9], [1, 7], [2, 7], [3, 0]])  # [s, b]
    rq, _ = apply_rotary_pos_emb_index(q, k, cos, sin, positions)
    rows = [9, 7, 7, 0]  # batch row 1's positions
    expected, _ = apply_rotary_pos_emb(q[:, 1], k[:, 1], cos[rows], sin[rows])  # [s, np, hn]
    torch.testing.assert_close(rq[:, 1], expected)


def test_fast_rotary_neox_layout():
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 3, 5, 8).unbind(0)  # [b, np, s, hn]
    positions = torch.randint(0, 20, (2, 5))
    rq, rk = FastRotaryEmbedding(8)(q, k, positions, max_seqlen=20)
    cos, sin = RotaryEmbedding(8)(q, seq_len=20)
    cos = F.embedding(positions, cos.squeeze(1)).unsqueeze(1)  # [b, 1, s, hn]
    sin = F.embedding(positions, sin.squeeze(1)).unsqueeze(1)
    torch.testing.assert_close(rq, q * cos + rotate_half(q) * sin)
    torch.testing.assert_close(rk, k * cos + rotate_half(k) * sin)


def test_fast_rotary_interleaved_rotates_pairs_of_the_first_channels():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 4, 8)
    positions = torch.arange(4)[None]
    rq, _ = FastRotaryEmbedding(4, interleaved=True)(q, q, positions, max_seqlen=4)
    inv_freq = 1 / 10000 ** (torch.arange(0, 4, 2).float() / 4)
    angles = positions[:, None, :, None].float() * inv_freq  # [1, 1, s, 2]
    torch.testing.assert_close(rq[..., :4], _rotate_pairs(q[..., :4], angles))
    torch.testing.assert_close(rq[..., 4:], q[..., 4:])


def test_fast_rotary_shift_and_unsupported_options():
    assert FastRotaryEmbedding(8, shift=2).inv_freq[0].item() == pytest.approx(10000 ** (-2 / 8))
    with pytest.raises(NotImplementedError, match="XPos"):
        FastRotaryEmbedding(8, scale_base=512)


def test_2d_sincos_table():
    table = get_2d_sincos_pos_embed(8, (2, 3), 1, 0)  # a class-token row, then 2 x 3 patches
    assert table.shape == (7, 8) and table.dtype == np.float64
    assert not table[0].any()
    patch = table[1 + 1 * 3 + 2]  # row 1, column 2
    omega = 1 / 10000 ** (np.arange(2) / 2)
    np.testing.assert_allclose(patch[:2], np.sin(2 * omega))  # first half: the column
    np.testing.assert_allclose(patch[6:], np.cos(1 * omega))  # second half: the row


def test_vision_rotary_rotates_rows_then_columns():
    torch.manual_seed(0)
    rope = VisionRotaryEmbedding(4, pt_seq_len=3)
    t = torch.randn(2, 3, 3, 10)  # [b, H, W, C]
    out = rope(t, start_index=1)
    freqs = 1 / 10000 ** (torch.arange(0, 4, 2).float() / 4)
    angles_h = torch.arange(3.0)[:, None, None] * freqs  # [H, 1, 2]
    angles_w = torch.arange(3.0)[None, :, None] * freqs  # [1, W, 2]
    angles = torch.cat((angles_h.expand(3, 3, 2), angles_w.expand(3, 3, 2)), dim=-1)  # [H, W, 4]
    torch.testing.assert_close(out[..., 1:9], _rotate_pairs(t[..., 1:9], angles))
    torch.testing.assert_close(out[..., [0, 9]], t[..., [0, 9]])
    fast = VisionRotaryEmbeddingFast(4, pt_seq_len=3)
    torch.testing.assert_close(fast(t[..., 1:9].flatten(1, 2)), out[..., 1:9].flatten(1, 2))


def test_chatglm_rotary_table_and_fast_rotary_agree():
    # The original's test_triton_rotary_embedding, ChatGLM half: rotate half the channels in pairs.
    torch.manual_seed(0)
    q = torch.randn(2, 3, 5, 16)  # [b, np, s, hn]
    positions = torch.randint(0, 12, (2, 5))
    table = GLMRotary(8)(12)  # [12, 4, 2]
    assert table.shape == (12, 4, 2)
    rotated = apply_rotary_pos_emb_bhs(q, table[positions])
    expected, _ = FastRotaryEmbedding(8, interleaved=True)(q, q, positions)
    torch.testing.assert_close(rotated, expected)
    in_order = apply_sbh(q.permute(2, 0, 1, 3), table[:, None])  # [s, b, np, hn], positions 0..s-1
    expected, _ = FastRotaryEmbedding(8, interleaved=True)(q, q, torch.arange(5)[None])
    torch.testing.assert_close(in_order.permute(1, 2, 0, 3), expected)
