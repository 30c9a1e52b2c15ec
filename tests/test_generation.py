"""Generation: the KV cache, filling_sequence, strategies, batched prompts, parity with HF."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from sat.generation import (
    BaseStrategy,
    BeamSearchStrategy,
    batch_filling_sequence,
    evaluate_perplexity,
    filling_sequence,
    stream_filling_sequence,
    update_mems,
)
from sat.generation.sampling_strategies import top_k_logits
from sat.generation.sampling_strategies.logits_processing import apply_repetition_penalty, ban_repeated_ngrams
from sat.hf import from_hf
from sat.model import BaseModel
from sat.model.cached_autoregressive_model import KVCache
from sat.model.mixins import CachedAutoregressiveMixin

EOS = 5
PROMPT = torch.tensor([3, 17, 42, 99, 7, 61])


def _sharpened_pair(hf):
    """``hf`` with weights scaled up, so greedy choices vary and reach EOS, and its sat copy."""
    with torch.no_grad():
        for param in hf.parameters():
            param.mul_(6.0)
    model, _ = from_hf(hf.eval())
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    return hf, model


@pytest.fixture(scope="module")
def gpt2_pair():
    """A tiny random GPT-2 and its sat copy."""
    torch.manual_seed(1)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=120, n_positions=256, bos_token_id=0, eos_token_id=EOS
    )
    return _sharpened_pair(GPT2LMHeadModel(config))


@pytest.fixture(scope="module")
def llama_pair():
    """A tiny random LLaMA with grouped-query attention and a non-default rotary base."""
    torch.manual_seed(1)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=120,
        max_position_embeddings=256,
        rope_theta=500.0,
        bos_token_id=0,
        eos_token_id=EOS,
    )
    return _sharpened_pair(LlamaForCausalLM(config))


def _uncached_greedy(model, prompt, steps):
    tokens = prompt[None]
    with torch.no_grad():
        for _ in range(steps):
            positions = torch.arange(tokens.shape[1])[None]
            logits = model(tokens, positions, -1)[0][:, -1]
            tokens = torch.cat((tokens, logits.argmax(-1, keepdim=True)), dim=1)
    return tokens


def _seq(prompt, new):
    return torch.cat((prompt, torch.full((new,), -1)))


def test_cached_greedy_equals_uncached_loop_gpt2(gpt2_pair):
    _, model = gpt2_pair
    expected = _uncached_greedy(model, PROMPT, 64)
    tokens, mems = filling_sequence(model, _seq(PROMPT, 64), 1, BaseStrategy(top_k=1))
    assert torch.equal(tokens, expected)
    assert isinstance(mems, KVCache) and mems.length == len(PROMPT) + 63
    assert len(set(tokens[0, len(PROMPT) :].tolist())) > 5  # a varied continuation, not one token


def test_cached_greedy_equals_uncached_with_gqa_and_rotary():
    torch.manual_seed(0)
    args = BaseModel.get_args(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_multi_query_heads=2,
        is_rotary_emb=True,
        is_gated_mlp=True,
        vocab_size=100,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = BaseModel(args).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    expected = _uncached_greedy(model, PROMPT, 64)
    tokens, _ = filling_sequence(model, _seq(PROMPT, 64), 1, BaseStrategy(top_k=1))
    assert torch.equal(tokens, expected)


@pytest.mark.parametrize("pair", ["gpt2_pair", "llama_pair"])
def test_greedy_and_beam_search_equal_transformers(pair, request):
    hf, model = request.getfixturevalue(pair)
    tokens, _ = filling_sequence(model, _seq(PROMPT, 40), 1, BaseStrategy(top_k=1))
    reference = hf.generate(PROMPT[None], max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=EOS)
    assert torch.equal(tokens, reference)
    assert len(set(tokens[0, len(PROMPT) :].tolist())) > 5  # a varied continuation, not one token

    beams, mems = filling_sequence(
        model, _seq(PROMPT, 40), 4, BeamSearchStrategy(4, deterministic=True, end_tokens=[EOS])
    )
    reference = hf.generate(PROMPT[None], max_new_tokens=40, do_sample=False, num_beams=4, pad_token_id=EOS)
    assert mems is None and torch.equal(beams[0], reference[0])
    assert len(beams) == 4


@pytest.mark.parametrize("length_penalty", [0.0, 2.0])
def test_beam_search_length_penalty_equals_transformers(gpt2_pair, length_penalty):
    hf, model = gpt2_pair
    prompt = torch.tensor([11, 12, 13])
    strategy = BeamSearchStrategy(3, length_penalty=length_penalty, deterministic=True, end_tokens=[EOS])
    beams, _ = filling_sequence(model, _seq(prompt, 30), 3, strategy)
    reference = hf.generate(
        prompt[None],
        max_new_tokens=30,
        do_sample=False,
        num_beams=3,
        length_penalty=length_penalty,
        pad_token_id=EOS,
    )
    assert torch.equal(beams[0], reference[0])


def test_sampled_beam_search_returns_finished_beams_best_first(gpt2_pair):
    _, model = gpt2_pair
    torch.manual_seed(0)
    strategy = BeamSearchStrategy(3, end_tokens=[EOS], no_repeat_ngram_size=2, stop_n_iter_unchanged=3)
    beams, _ = filling_sequence(model, _seq(PROMPT, 30), 1, strategy)
    assert 1 <= len(beams) <= 3 and all(torch.equal(beam[: len(PROMPT)], PROMPT) for beam in beams)
    assert strategy.end_beams == []  # finalize reset the state


def test_kv_cache_writes_in_place():
    cache = KVCache(num_layers=1, capacity=16)
    k = torch.randn(2, 3, 4, 8)
    keys, _ = cache.update(0, k, k)
    pointer = cache.keys[0].data_ptr()
    for step in range(12):
        new = torch.full((2, 3, 1, 8), float(step))
        keys, values = cache.update(0, new, new)
    assert cache.keys[0].data_ptr() == pointer  # no reallocation, no copy of the cache
    assert keys.shape == (2, 3, 16, 8) and torch.equal(keys[:, :, :4], k)
    assert torch.equal(keys[:, :, -1], torch.full((2, 3, 8), 11.0))
    cache.update(0, torch.zeros(2, 3, 1, 8), torch.zeros(2, 3, 1, 8))  # beyond capacity: grows
    assert cache.keys[0].shape[2] == 32 and cache.length == 17


def test_original_mems_contract(gpt2_pair):
    _, model = gpt2_pair
    ids = PROMPT[None]
    with torch.no_grad():
        _, *outputs = model(ids, torch.arange(6)[None], -1)
        mems = update_mems([out["mem_kv"] for out in outputs], None, 100)
        assert mems.shape == (2, 1, 6, 2 * 64)
        step = torch.tensor([[8]])
        logits_legacy, *outputs = model(step, torch.tensor([[6]]), torch.ones(1, 1, 1, 7), mems=mems)
        full = model(torch.cat((ids, step), 1), torch.arange(7)[None], -1)[0]
    # The cached step sums attention in another order: a few float32 ulps of the logits' scale
    # (9 ulps of |14| measured on one CPU, under 1e-5 on another).
    bound = 16 * torch.finfo(torch.float32).eps * full[:, -1].abs().max()
    assert (logits_legacy[:, -1] - full[:, -1]).abs().max() < bound
    assert update_mems([out["mem_kv"] for out in outputs], mems, 5).shape == (2, 1, 5, 128)


def test_filling_sequence_with_original_mems_continues_generation(gpt2_pair):
    _, model = gpt2_pair
    with torch.no_grad():  # mems hold all but the last prompt token, which the next forward feeds
        _, *outputs = model(PROMPT[None, :-1], torch.arange(5)[None], -1)
    mems = update_mems([out["mem_kv"] for out in outputs], None, 100)
    tokens, mems_after = filling_sequence(model, _seq(PROMPT, 8), 1, BaseStrategy(top_k=1), mems=mems)
    expected, _ = filling_sequence(model, _seq(PROMPT, 8), 1, BaseStrategy(top_k=1))
    assert torch.equal(tokens, expected) and mems_after.shape == (2, 1, 13, 128)
    with pytest.raises(ValueError, match="mems already hold 6 positions"):
        filling_sequence(
            model,
            _seq(PROMPT, 8),
            1,
            BaseStrategy(top_k=1),
            mems=update_mems([out["mem_kv"] for out in model(PROMPT[None], torch.arange(6)[None], -1)[1:]], None, 100),
        )


def test_forced_tokens_and_streaming(gpt2_pair):
    _, model = gpt2_pair
    seq = torch.tensor([3, 17, 42, -1, -1, 9, -1, -1, 4])
    tokens, _ = filling_sequence(model, seq, 1, BaseStrategy(top_k=1))
    assert tokens.shape == (1, 9) and tokens[0, 5] == 9 and tokens[0, 8] == 4
    assert torch.equal(tokens[0, :3], seq[:3])
    expected = _uncached_greedy(model, seq[:3], 2)
    assert torch.equal(tokens[0, :5], expected[0])
    steps = [t.shape[1] for t, _ in stream_filling_sequence(model, seq, 1, BaseStrategy(top_k=1))]
    assert steps == [4, 5, 7, 8, 9]


def test_batch_samples_and_per_row_end_tokens():
    strategy = BaseStrategy(top_k=1, end_tokens=[7])
    tokens = torch.zeros(3, 2, dtype=torch.long)
    steps = [torch.tensor([1, 7, 2]), torch.tensor([7, 3, 2]), torch.tensor([4, 4, 7])]
    for step in steps:
        logits = torch.nn.functional.one_hot(step, 10).float()
        tokens, _ = strategy.forward(logits, tokens, None)
        if strategy.is_done:
            break
    assert tokens[:, 2:].tolist() == [[1, 7, 7], [7, 7, 7], [2, 2, 7]]
    assert strategy.is_done
    strategy.finalize(tokens, None)
    assert not strategy.is_done


def test_filling_sequence_generates_batch_samples_without_autograd(gpt2_pair):
    _, model = gpt2_pair
    torch.manual_seed(0)
    tokens, _ = filling_sequence(model, _seq(PROMPT, 10), 4, BaseStrategy(top_k=50, temperature=2.0))
    assert tokens.shape == (4, 16) and not tokens.requires_grad
    assert len({tuple(row) for row in tokens.tolist()}) > 1  # samples differ
    assert all(p.grad is None for p in model.parameters())


def test_top_k_and_top_p_filtered_distribution_exactly():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    probs = lambda lg: torch.softmax(lg, dim=-1)  # noqa: E731
    # top_k=2 keeps 0.4 and 0.3 -> renormalised 4/7 and 3/7
    assert torch.allclose(probs(top_k_logits(logits, top_k=2)), torch.tensor([[0, 4 / 7, 0, 3 / 7, 0]]))
    # top_p=0.75 keeps the smallest set reaching 0.75: 0.4 + 0.3 + 0.15 = 0.85 (0.7 is not enough)
    assert torch.allclose(probs(top_k_logits(logits, top_p=0.75)), torch.tensor([[0, 0.4, 0, 0.3, 0.15]]) / 0.85)
    # independent: top_p alone works with top_k=0, and top_k alone is not greedy
    assert torch.allclose(probs(top_k_logits(logits, top_k=0, top_p=0.3)), torch.tensor([[0, 1.0, 0, 0, 0]]))
    both = probs(top_k_logits(logits, top_k=3, top_p=0.6))  # top-3 {0.4, 0.3, 0.15}, then mass 0.6 of them
    assert torch.allclose(both, torch.tensor([[0, 0.4 / 0.7, 0, 0.3 / 0.7, 0]]))
    assert torch.equal(top_k_logits(logits), logits)  # no filtering by default


def test_greedy_strategy_does_not_sort(monkeypatch):
    monkeypatch.setattr(torch, "sort", lambda *a, **k: pytest.fail("greedy sorted the vocabulary"))
    monkeypatch.setattr(torch, "topk", lambda *a, **k: pytest.fail("greedy ran topk"))
    tokens, _ = BaseStrategy(top_k=1).forward(
        torch.tensor([[0.1, 3.0, 0.2]]), torch.zeros(1, 1, dtype=torch.long), None
    )
    assert tokens.tolist() == [[0, 1]]


def test_repetition_penalty_and_ngram_ban_equal_transformers():
    torch.manual_seed(0)
    logits = torch.randn(2, 30)
    tokens = torch.randint(0, 30, (2, 12))
    expected = RepetitionPenaltyLogitsProcessor(1.7)(tokens, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, tokens, 1.7), expected)
    tokens = torch.tensor([[1, 2, 3, 1, 2, 4, 1, 2], [5, 5, 5, 5, 6, 7, 8, 5]])
    expected = NoRepeatNGramLogitsProcessor(3)(tokens, logits.clone())
    assert torch.equal(ban_repeated_ngrams(logits, tokens, 3), expected)


def test_nan_logits_raise_or_use_default():
    strategy = BaseStrategy(top_k=1)
    tokens = torch.zeros(2, 1, dtype=torch.long)
    logits = torch.tensor([[float("nan"), 1.0, 0.0], [0.0, 0.0, 2.0]])
    with pytest.raises(ValueError, match="NaN in logits"):
        strategy.forward(logits, tokens, None)
    out, _ = strategy.forward(logits, tokens, None, nan_default_token=0)
    assert out[:, 1].tolist() == [0, 2]


def test_batched_prompts_equal_per_prompt_generation(gpt2_pair):
    _, model = gpt2_pair
    prompts = [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11], [20, 21, 22, 23]]
    first, _ = filling_sequence(model, _seq(torch.tensor(prompts[0]), 6), 1, BaseStrategy(top_k=1))
    end = int(first[0, -1])  # a token the first row produces, so that row stops early
    results = batch_filling_sequence(model, prompts, 24, BaseStrategy(top_k=1, end_tokens=[end]))
    for prompt, result in zip(prompts, results):
        alone, _ = filling_sequence(model, _seq(torch.tensor(prompt), 24), 1, BaseStrategy(top_k=1))
        alone = alone[0].tolist()
        if end in alone[len(prompt) :]:
            alone = alone[: len(prompt) + alone[len(prompt) :].index(end) + 1]
        assert result.tolist() == alone, prompt
    assert int(results[0][-1]) == end and len(results[0]) <= len(prompts[0]) + 6  # stopped on its own


def test_evaluate_perplexity_equals_cross_entropy(gpt2_pair):
    _, model = gpt2_pair
    tokens = torch.tensor([[3, 17, 42, 99, 7, 61], [4, 4, 8, 9, -1, -1]])
    loss_mask = torch.ones(2, 6)
    mask = torch.ones(1, 1, 6, 6).tril()
    nll = evaluate_perplexity(model, tokens, mask, torch.arange(6)[None], loss_mask)
    with torch.no_grad():
        logits = model(tokens.clamp(min=0), torch.arange(6)[None], -1)[0]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 120), tokens[:, 1:].reshape(-1), reduction="none", ignore_index=-1
    ).view(2, 5)
    assert torch.allclose(nll[0], ce[0].mean(), atol=1e-5)
    assert torch.allclose(nll[1], ce[1, :3].mean(), atol=1e-5)
    per_token = evaluate_perplexity(model, tokens, mask, torch.arange(6)[None], loss_mask, reduction="none")
    assert per_token.shape == (2, 5) and per_token[1, 3:].abs().sum() == 0


def test_missing_cache_mixin_is_reported():
    args = BaseModel.get_args(num_layers=1, hidden_size=16, num_attention_heads=2, vocab_size=30)
    with pytest.raises(RuntimeError, match="add the cache mixin last"):
        filling_sequence(BaseModel(args).eval(), _seq(torch.tensor([1, 2]), 3), 1, BaseStrategy(top_k=1))
    with pytest.raises(ValueError, match="seq must start with at least one prompt token"):
        filling_sequence(BaseModel(args).eval(), torch.tensor([-1, -1]), 1)
