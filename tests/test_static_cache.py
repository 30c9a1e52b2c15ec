"""Decoding over the preallocated KV cache: the uncached model's tokens, per-step work that does
not grow (no concatenation, no reallocation), last-position logits, and the weights' memory
order chosen by the rows each step multiplies."""

from __future__ import annotations

import pytest
import torch

from sat.generation import BaseStrategy, batch_filling_sequence, filling_sequence, stream_filling_sequence
from sat.generation.weight_layout import lay_out_for_decoding_
from sat.model.cached_autoregressive_model import KVCache
from sat.model.mixins import CachedAutoregressiveMixin
from sat.model.official import GPT2Model
from sat.ops.linear import lay_out_for_rows_
from tests.conftest import TINY

PROMPT = torch.tensor([3, 17, 42, 99, 7, 61])


@pytest.fixture
def gpt2():
    """A tiny GPT-2 built by sat (``[out, in]`` weights), sharpened so greedy tokens vary."""
    model = GPT2Model(GPT2Model.get_args(**TINY)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(6.0)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    return model


def _uncached_greedy(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by re-running the whole sequence, with the explicit mask users pass."""
    tokens = prompt[None]
    with torch.no_grad():
        for _ in range(steps):
            length = tokens.shape[1]
            mask = torch.ones(1, 1, length, length).tril()
            logits = model(tokens, torch.arange(length)[None], mask)[0][:, -1]
            tokens = torch.cat((tokens, logits.argmax(-1, keepdim=True)), dim=1)
    return tokens[0]


def _seq(prompt: torch.Tensor, new: int) -> torch.Tensor:
    return torch.cat((prompt, torch.full((new,), -1)))


def test_cached_greedy_equals_the_uncached_model(gpt2):
    tokens, _ = filling_sequence(gpt2, _seq(PROMPT, 12), 1, BaseStrategy(top_k=1))
    expected = _uncached_greedy(gpt2, PROMPT, 12)
    assert len(set(expected[len(PROMPT) :].tolist())) > 3  # the tokens vary: a real check
    assert torch.equal(tokens[0], expected)


def test_batched_prompts_of_different_lengths_equal_each_alone(gpt2):
    prompts = [PROMPT, PROMPT[:2], torch.tensor([9, 8, 7, 6])]
    results = batch_filling_sequence(gpt2, prompts, 8, BaseStrategy(top_k=1))
    for prompt, result in zip(prompts, results):
        assert torch.equal(result, _uncached_greedy(gpt2, prompt, 8))


def test_decoding_steps_concatenate_nothing_and_keep_the_cache_buffers(gpt2, monkeypatch):
    cache = KVCache(len(gpt2.transformer.layers), capacity=len(PROMPT) + 16)
    concatenated: list[torch.dtype] = []
    original_cat = torch.cat

    def spy(tensors, *args, **kwargs):
        concatenated.extend(t.dtype for t in tensors)
        return original_cat(tensors, *args, **kwargs)

    steps = []
    monkeypatch.setattr(torch, "cat", spy)
    for _, mems in stream_filling_sequence(gpt2, _seq(PROMPT, 16), 1, BaseStrategy(top_k=1), mems=cache):
        steps.append(tuple(keys.data_ptr() for keys in mems.keys))
    assert len(steps) == 16 and len(set(steps)) == 1  # buffers allocated once, written in place
    assert set(concatenated) <= {torch.long}  # only the strategy's token ids, never keys or values


def test_batched_steps_concatenate_nothing_but_token_ids(gpt2, monkeypatch):
    concatenated: list[torch.dtype] = []
    original_cat = torch.cat

    def spy(tensors, *args, **kwargs):
        concatenated.extend(t.dtype for t in tensors)
        return original_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", spy)
    batch_filling_sequence(gpt2, [PROMPT, PROMPT[:3]], 8, BaseStrategy(top_k=1))
    assert set(concatenated) <= {torch.long}  # no mask rebuilt or cache re-concatenated per step


def test_last_logits_only_is_the_last_position(gpt2):
    ids, positions = PROMPT[None], torch.arange(len(PROMPT))[None]
    with torch.no_grad():
        full = gpt2(ids, positions, -1)[0]
        last = gpt2(ids, positions, -1, last_logits_only=True)[0]
    assert last.shape == (1, 1, full.shape[-1])
    assert (last[:, 0] - full[:, -1]).abs().max() < 1e-5  # one row's product rounds differently


def test_weights_take_the_memory_order_of_the_rows_each_step_multiplies(gpt2):
    qkv = gpt2.transformer.layers[0].attention.query_key_value.weight
    values = qkv.detach().clone()
    expected = _uncached_greedy(gpt2, PROMPT, 6)
    lay_out_for_decoding_(gpt2, 1)  # one row: [in, out] memory
    assert qkv.t().is_contiguous() and torch.equal(qkv, values)
    assert gpt2.transformer.word_embeddings.weight.t().is_contiguous()
    assert torch.equal(filling_sequence(gpt2, _seq(PROMPT, 6), 1, BaseStrategy(top_k=1))[0][0], expected)
    lay_out_for_decoding_(gpt2, 3)  # several rows: [out, in] memory
    assert qkv.is_contiguous() and torch.equal(qkv, values)


def test_a_weight_viewing_a_larger_buffer_keeps_its_memory():
    flat = torch.zeros(40)
    weight = torch.nn.Parameter(flat[:12].view(3, 4))  # as ZeRO's flat buffers hold parameters
    lay_out_for_rows_(weight, 1)
    assert weight.data_ptr() == flat.data_ptr() and weight.is_contiguous()
