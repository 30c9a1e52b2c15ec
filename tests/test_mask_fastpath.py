"""Masks the caller passes take SDPA (converted once per forward) with the eager reference's
outputs, fully masked rows included; the eager path stays for hooks that need it.

Tolerance: 1e-6 on outputs of order 1, fp32 rounding (SDPA and the eager softmax sum in
different orders; observed differences are below 4e-7)."""

from __future__ import annotations

import pytest
import torch

import sat.model.layers.attention as layer_attention
from sat.model import BaseMixin, BaseModel
from sat.model.layers import attention_fn_default
from sat.ops.attention import sdpa_mask_form, standard_attention, user_attention_mask

TOLERANCE = 1e-6
S = 6


def _left_padded(batch: int = 3) -> torch.Tensor:
    """``[b, 1, S, S]`` causal masks of rows left-padded by 0, 2, 4 positions: the padding
    queries attend to nothing."""
    real = torch.ones(batch, S)
    for row in range(batch):
        real[row, : 2 * row] = 0
    return torch.ones(S, S).tril()[None, None] * real[:, None, None, :]


def _block() -> torch.Tensor:
    """Two diagonal blocks of 3 positions each, ``[1, 1, S, S]``."""
    return torch.block_diag(torch.ones(3, 3), torch.ones(3, 3))[None, None]


def _fully_masked_rows() -> torch.Tensor:
    mask = torch.ones(2, 1, S, S).tril()
    mask[0, :, 2] = 0  # one row of the first sample sees nothing
    mask[1] = 0  # the second sample sees nothing at all
    return mask


MASKS = {
    "float (1,1,S,S)": lambda: torch.ones(1, 1, S, S).tril(),
    "bool [S,S]": lambda: torch.ones(S, S, dtype=torch.bool).tril(),
    "broadcast over queries (b,1,1,S)": lambda: (torch.arange(S) >= torch.tensor([[0], [3]]))[:, None, None, :],
    "padded (b,1,S,S)": _left_padded,
    "block": _block,
    "fully masked rows": _fully_masked_rows,
}


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("name", list(MASKS))
def test_sdpa_with_a_caller_mask_equals_the_eager_reference(name, kv_heads):
    mask = MASKS[name]()
    batch = max(mask.shape[0], 2) if mask.dim() == 4 else 2
    q = torch.randn(batch, 4, S, 8)
    k, v = torch.randn(2, batch, kv_heads, S, 8).unbind(0)
    expand = lambda x: x.repeat_interleave(4 // kv_heads, dim=1)  # noqa: E731
    expected = standard_attention(q, expand(k), expand(v), mask.float())
    fast = attention_fn_default(q, k, v, user_attention_mask(mask, torch.float32))
    assert not fast.isnan().any()
    assert (fast - expected).abs().max() < TOLERANCE


def test_fully_masked_rows_are_the_uniform_average_as_in_the_eager_reference():
    mask = _fully_masked_rows()
    q = torch.randn(2, 4, S, 8)
    k, v = torch.randn(2, 2, 4, S, 8).unbind(0)
    fast = attention_fn_default(q, k, v, user_attention_mask(mask, torch.float32))
    mean = v.mean(dim=2)  # [b, np, hn]
    assert (fast[0, :, 2] - mean[0]).abs().max() < TOLERANCE
    assert (fast[1] - mean[1, :, None]).abs().max() < TOLERANCE


def test_unscaled_scores_with_a_caller_mask():
    mask = _left_padded()
    q, k, v = torch.randn(3, 3, 2, S, 8).unbind(0)
    expected = standard_attention(q, k, v, mask, scaling_attention_score=False)
    fast = attention_fn_default(q, k, v, user_attention_mask(mask, torch.float32), scaling_attention_score=False)
    assert (fast - expected).abs().max() < 1e-5  # unscaled scores are 2.8x larger: so are their roundings


def test_the_callers_tensor_is_not_tagged_and_the_hooks_get_it_as_passed():
    mask = torch.ones(1, 1, S, S).tril()
    converted = user_attention_mask(mask, torch.float32)
    assert converted is not mask and sdpa_mask_form(mask) is None
    assert converted.dtype == torch.float32 and torch.equal(converted, mask)
    assert sdpa_mask_form(converted * 1) is None  # a mask a mixin rebuilt goes eager


class _Spies:
    def __init__(self, monkeypatch):
        self.eager = 0
        self.sdpa = 0
        original_eager, original_sdpa = (
            layer_attention.standard_attention,
            torch.nn.functional.scaled_dot_product_attention,
        )

        def eager(*args, **kwargs):
            self.eager += 1
            return original_eager(*args, **kwargs)

        def sdpa(*args, **kwargs):
            self.sdpa += 1
            return original_sdpa(*args, **kwargs)

        monkeypatch.setattr(layer_attention, "standard_attention", eager)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)


def _model_and_inputs(tiny_args):
    model = BaseModel(tiny_args()).eval()
    ids = torch.randint(0, 100, (3, S))
    positions = torch.arange(S).expand(3, S)
    return model, ids, positions


def test_a_forward_with_a_mask_never_runs_the_eager_path(tiny_args, monkeypatch):
    model, ids, positions = _model_and_inputs(tiny_args)
    mask = _left_padded()
    with torch.no_grad():
        eager_logits = model(ids, positions, mask, log_attention_weights=torch.zeros(1))[0]  # forces eager
        spies = _Spies(monkeypatch)
        logits = model(ids, positions, mask)[0]
    assert spies.eager == 0 and spies.sdpa == len(model.transformer.layers)
    assert (logits - eager_logits).abs().max() < 1e-5  # logits of order 3 after two layers and the head


class _ProbabilitiesMixin(BaseMixin):
    """Overrides attention_fn with the standard signature and computes the probabilities itself."""

    def __init__(self):
        super().__init__()
        self.masks: list[torch.Tensor] = []
        self.probabilities: list[torch.Tensor] = []

    def attention_fn(self, q, k, v, mask, dropout_fn, **kw_args):
        self.masks.append(mask)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [b, np, sq, sk]
        probabilities = torch.softmax(scores * mask - 10000.0 * (1.0 - mask), dim=-1)
        self.probabilities.append(probabilities)
        return probabilities @ v


def test_a_mixin_that_needs_probabilities_gets_the_mask_as_passed(tiny_args, monkeypatch):
    model, ids, positions = _model_and_inputs(tiny_args)
    mask = _left_padded()
    with torch.no_grad():
        expected = model(ids, positions, mask)[0]
        mixin = _ProbabilitiesMixin()
        model.add_mixin("probabilities", mixin)
        spies = _Spies(monkeypatch)
        logits = model(ids, positions, mask)[0]
    assert spies.sdpa == 0
    assert [m.shape for m in mixin.masks] == [mask.shape] * 2 and all(m.dtype == torch.float32 for m in mixin.masks)
    assert all(torch.equal(m, mask) for m in mixin.masks)
    assert (logits - expected).abs().max() < 1e-5


def test_a_mixin_passing_additive_weights_keeps_the_eager_path(tiny_args, monkeypatch):
    model, ids, positions = _model_and_inputs(tiny_args)
    with torch.no_grad():
        spies = _Spies(monkeypatch)
        model(ids, positions, _block(), log_attention_weights=torch.zeros(1, 1, S, S))
    assert spies.eager == len(model.transformer.layers) and spies.sdpa == 0
