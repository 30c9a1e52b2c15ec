"""Finetuning mixins together: with the KV cache (cached generation equals uncached), LoRA with
prefix tuning, an MLP head in place of the LM head, and the combinations that conflict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from finetune_cases import IDS, LAYERS, MIXINS, inputs, logits, task_loss, tiny, train

from sat.generation import BaseStrategy, filling_sequence
from sat.model.finetune import MLPHeadMixin, PrefixTuningMixin, count_parameters, freeze_all_but
from sat.model.hooks import HookError
from sat.model.mixins import CachedAutoregressiveMixin

PROMPT = torch.tensor([3, 17, 42, 9, 61])
NEW_TOKENS = 40


def finetuned(family: str, names: tuple[str, ...]) -> torch.nn.Module:
    """The tiny model with mixins ``names``, their parameters moved off their start (LoRA's B = 0)."""
    model, _ = tiny(family)
    for name in names:
        build, reinit, *_ = MIXINS[name]
        model.add_mixin(name, build(family), reinit=reinit)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for trainable in freeze_all_but(model, [pattern for name in names for pattern in MIXINS[name][2]]):
            param = model.get_parameter(trainable)
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


class Greedy(BaseStrategy):
    """Greedy decoding that keeps the logits of every step."""

    def __init__(self):
        super().__init__(top_k=1)
        self.logits: list[torch.Tensor] = []

    def forward(self, logits, tokens, mems, **kw_args):
        self.logits.append(logits.clone())
        return super().forward(logits, tokens, mems, **kw_args)


def cached_greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[1, len(prompt) + steps]`` and the logits of each step ``[steps, vocab]``."""
    strategy = Greedy()
    tokens, _ = filling_sequence(model, torch.cat((prompt, torch.full((steps,), -1))), 1, strategy)
    return tokens, torch.cat(strategy.logits)


def uncached_greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as ``cached_greedy`` by a full forward per step (``model`` without the KV cache)."""
    tokens, step_logits = prompt[None], []
    with torch.no_grad():
        for _ in range(steps):
            step_logits.append(model(tokens, torch.arange(tokens.shape[1])[None], -1)[0][:, -1])
            tokens = torch.cat((tokens, step_logits[-1].argmax(-1, keepdim=True)), dim=1)
    return tokens, torch.cat(step_logits)


def check_cache(model: torch.nn.Module, prompt: torch.Tensor) -> None:
    """Greedy generation with the KV cache (added last: the outermost ``attention_fn``) gives the
    tokens and, within 1e-5, the logits of generation without it."""
    expected_tokens, expected_logits = uncached_greedy(model, prompt, NEW_TOKENS)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    tokens, step_logits = cached_greedy(model, prompt, NEW_TOKENS)
    assert torch.equal(tokens, expected_tokens)
    assert (step_logits - expected_logits).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize(
    "names", [("prefix",), ("lora",), ("lora", "prefix"), ("prompt",), ("adapter", "ffadd")], ids="+".join
)
def test_cached_generation_equals_uncached(family, names):
    model = finetuned(family, names)
    prompt = PROMPT
    if "prompt" in names:
        prompt = torch.cat((model.get_mixin("prompt").virtual_token_ids(), PROMPT))
    check_cache(model, prompt)


def test_prefix_heads_may_be_the_query_heads_with_gqa():
    model, _ = tiny("llama-gqa")
    model.add_mixin("prefix", PrefixTuningMixin(LAYERS, 8, 4, 3))  # 4 query heads, 2 key/value heads
    check_cache(model.eval(), PROMPT)
    model.del_mixin("auto-regressive")
    model.del_mixin("prefix")
    model.add_mixin("prefix", PrefixTuningMixin(LAYERS, 8, 3, 3))
    with pytest.raises(ValueError, match="3 heads per layer .* 4 query and 2 key/value heads"):
        logits(model, "llama-gqa")


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa", "bert"])
def test_lora_and_prefix_train_together(family):
    model, _ = tiny(family)
    for name in ("lora", "prefix"):
        build, reinit, *_ = MIXINS[name]
        model.add_mixin(name, build(family), reinit=reinit)
    trainable = freeze_all_but(model, ["matrix_", r"mixins\.prefix\."])
    task_loss(model, family).backward()
    assert all(model.get_parameter(name).grad is not None for name in trainable)
    model.zero_grad()
    losses = train(model, family)
    assert losses[-1] < losses[0] - 0.1


LM_HEADS = {"gpt2": "gpt2-final", "llama-gqa": "lm", "bert": "bert-final"}


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa", "bert"])
def test_mlp_head_after_removing_the_lm_head_with_lora(family):
    model, _ = tiny(family)
    with pytest.raises(HookError, match=rf"{LM_HEADS[family]}.*head|head.*{LM_HEADS[family]}"):
        model.add_mixin("head", MLPHeadMixin(32, 16, 2, init_std=0.1))
    model.del_mixin(LM_HEADS[family])
    model.add_mixin("head", MLPHeadMixin(32, 16, 2, init_std=0.1))
    build, reinit, *_ = MIXINS["lora"]
    model.add_mixin("lora", build(family), reinit=reinit)
    freeze_all_but(model, ["matrix_", r"mixins\.head\."])
    assert count_parameters(model).trainable < count_parameters(model).total / 5
    labels = IDS[:, 0] % 2  # a label the first token decides
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        out = logits(model, family)  # [b, s, 2]
        loss = F.cross_entropy(out[:, -1] if family != "bert" else out[:, 0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert out.shape == (2, 12, 2)
    assert losses[-1] < losses[0] / 2


def test_conflicting_final_forwards_name_both_mixins():
    model, _ = tiny("bert")
    model.del_mixin("bert-final")
    model.add_mixin("head", MLPHeadMixin(32, 2))
    with pytest.raises(HookError, match="head.*second-head|second-head.*head"):
        model.add_mixin("second-head", MLPHeadMixin(32, 3))
    assert list(model.mixins) == ["bert-type", "head"]
    assert inputs(model) is IDS


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_prefix_with_a_mask_tensor_equals_the_tagged_masks(family):
    model = finetuned(family, ("prefix",))
    positions = torch.arange(12).expand_as(IDS)
    ones = torch.ones(2, 1, 12, 12)
    explicit = ones.tril() if family == "gpt2" else ones  # untagged: the eager path with the prefix's ones in front
    with torch.no_grad():
        expected = logits(model, family)
        got = model(IDS, positions, explicit)[0]
        assert (got - expected).abs().max() <= 1e-5
        padded = explicit.clone()
        padded[1, ..., :3] = 0  # row 1 starts with 3 padding tokens: its real tokens ignore them
        out = model(IDS, positions, padded)[0]
        assert torch.equal(out[0], got[0]) and not torch.allclose(out[1, 3:], got[1, 3:])
