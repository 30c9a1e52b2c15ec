"""Checks every causal language model family goes through: greedy generation (cached, uncached,
transformers), batched prompts, and finetuning mixins on the tiny task of ``finetune_cases``."""

from __future__ import annotations

import argparse

import torch
from finetune_cases import MIXINS, VOCAB, task_loss, train

from sat.generation import BaseStrategy, batch_filling_sequence, filling_sequence
from sat.model.finetune import freeze_all_but
from sat.model.mixins import CachedAutoregressiveMixin

SEQ = 12
IDS = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(SEQ).expand(2, SEQ)


# The sizes of a tiny LLaMA-shaped transformers config (GQA: 2 key/value heads).
HF_TINY = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=1,
    attn_implementation="sdpa",  # what from_pretrained picks: a reloaded save_hf output computes the same
)


def sat_logits(model: torch.nn.Module) -> torch.Tensor:
    """The sat causal LM's logits ``[2, SEQ, vocab]`` on ``IDS``."""
    return model(IDS, POSITIONS, -1)[0]


def hf_logits(hf_model) -> torch.Tensor:
    """The transformers causal LM's logits on ``IDS``."""
    return hf_model(IDS).logits


def sharpen(hf_model, scale: float):
    """Scale every weight of a random HF model by ``scale`` (sharper, like a trained model: greedy
    choices vary); returns it in eval mode."""
    with torch.no_grad():
        for param in hf_model.parameters():
            param.mul_(scale)
    return hf_model.eval()


def tiny_args(model_cls: type, **overrides) -> argparse.Namespace:
    """``get_args`` of a 2-layer, hidden-32, 4-head (2 key/value heads) ``model_cls`` over
    ``VOCAB`` tokens, without dropout."""
    values = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_multi_query_heads=2, vocab_size=VOCAB)
    return model_cls.get_args(**values, hidden_dropout=0.0, attention_dropout=0.0, **overrides)


def to_fill(prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``prompt [s]`` followed by ``new_tokens`` positions to fill (``-1``)."""
    return torch.cat((prompt, torch.full((new_tokens,), -1)))


def uncached_greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding by full forwards over the whole sequence: ``[1, s + new_tokens]``."""
    tokens = prompt[None]
    with torch.no_grad():
        for _ in range(new_tokens):
            step = model(tokens, torch.arange(tokens.shape[1])[None], -1)[0][:, -1]  # [1, vocab]
            tokens = torch.cat((tokens, step.argmax(-1, keepdim=True)), dim=1)
    return tokens


def with_cache(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the KV cache mixin added last (once)."""
    if "auto-regressive" not in model.mixins:
        model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    return model


def check_greedy_generation(hf_model, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Cached greedy (``filling_sequence``, ``BaseStrategy(top_k=1)``) of the sat ``model`` equals
    its uncached greedy and ``hf_model.generate(do_sample=False)``, and is no repetition of one
    token. Returns the tokens ``[1, s + new_tokens]``."""
    uncached = uncached_greedy(model, prompt, new_tokens)
    tokens, _ = filling_sequence(with_cache(model), to_fill(prompt, new_tokens), 1, BaseStrategy(top_k=1))
    reference = hf_model.generate(
        prompt[None], max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(tokens, uncached), (tokens, uncached)
    assert torch.equal(tokens, reference), (tokens, reference)
    assert len(set(tokens[0, len(prompt) :].tolist())) > 5  # a varied continuation
    return tokens


def check_batched_prompts(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int) -> None:
    """``batch_filling_sequence`` on prompts of different lengths gives each prompt's own greedy
    continuation."""
    model = with_cache(model)
    results = batch_filling_sequence(model, prompts, new_tokens, BaseStrategy(top_k=1))
    for prompt, result in zip(prompts, results):
        alone, _ = filling_sequence(model, to_fill(torch.tensor(prompt), new_tokens), 1, BaseStrategy(top_k=1))
        assert result.tolist() == alone[0].tolist(), prompt


def check_finetuning_reduces_the_loss(model: torch.nn.Module, name: str, family: str = "llama-gqa") -> list[float]:
    """Mixin ``name`` of ``finetune_cases.MIXINS`` (built as for ``family``'s attention) added to
    ``model`` (vocabulary ``finetune_cases.VOCAB``): only its parameters train, each gets a
    gradient, and the loss of the tiny task falls. Returns the losses."""
    build, reinit, patterns, lr = MIXINS[name]
    model.add_mixin(name, build(family), reinit=reinit)
    trainable = freeze_all_but(model, patterns)
    task_loss(model, family).backward()
    assert trainable and all(model.get_parameter(n).grad is not None for n in trainable)
    model.zero_grad()
    losses = train(model, family, lr=lr)
    assert losses[-1] < losses[0] - 0.02, losses
    return losses
