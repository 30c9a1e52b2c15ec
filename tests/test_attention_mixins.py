"""MemoryEfficientAttentionMixin and its transposed form: SDPA through a mixin, same logits."""

from __future__ import annotations

import pytest
import torch

from sat.model import BaseModel
from sat.model.attention import MemoryEfficientAttentionMixin, TransposedMemoryEfficientAttentionMixin
from sat.ops import memory_efficient_attention
from sat.ops.attention import causal_attention_mask, standard_attention


def _model(**kw) -> BaseModel:
    torch.manual_seed(0)
    args = BaseModel.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50, max_sequence_length=32, **kw
    )
    return BaseModel(args).eval()


@pytest.mark.parametrize("mixin", [MemoryEfficientAttentionMixin, TransposedMemoryEfficientAttentionMixin])
@pytest.mark.parametrize("mask", [None, -1, "padding"])
def test_mixin_keeps_the_logits(mixin, mask):
    model = _model()
    ids = torch.randint(0, 50, (2, 7))
    positions = torch.arange(7).expand(2, 7)
    if mask == "padding":  # an untagged mask tensor: causal, first key of row 1 hidden
        mask = torch.ones(2, 1, 7, 7).tril()
        mask[1, :, 1:, 0] = 0
    with torch.no_grad():
        plain = model(ids, positions, mask)[0]
        model.add_mixin("mea", mixin())
        with_mixin = model(ids, positions, mask)[0]
    assert with_mixin.shape == (2, 7, 50)
    torch.testing.assert_close(with_mixin, plain, atol=1e-5, rtol=1e-5)


def test_transposed_mixin_with_grouped_query_heads():
    model = _model(num_multi_query_heads=2)
    ids = torch.randint(0, 50, (1, 5))
    positions = torch.arange(5)[None]
    with torch.no_grad():
        plain = model(ids, positions, -1)[0]
        model.add_mixin("mea", TransposedMemoryEfficientAttentionMixin())
        torch.testing.assert_close(model(ids, positions, -1)[0], plain, atol=1e-5, rtol=1e-5)


def test_function_takes_the_sequence_first_layout():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 6, 4, 8).unbind(0)  # [b, s, n, hn]
    mask = torch.ones(6, 6).tril()
    expected = standard_attention(*(t.transpose(1, 2) for t in (q, k, v)), mask).transpose(1, 2)
    for kernel_mask in (mask, causal_attention_mask(6, torch.float32, torch.device("cpu"))):  # untagged, tagged
        out = memory_efficient_attention(q, k, v, mask=kernel_mask)
        assert out.shape == (2, 6, 4, 8)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_additive_weights_are_refused():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="log_attention_weights"):
        MemoryEfficientAttentionMixin().attention_fn(q, q, q, None, log_attention_weights=torch.zeros(3, 3))
