"""Tiny models of each family, their finetuning mixins and a tiny task, shared by the
finetuning tests."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sat.model.finetune import AdapterMixin, FFADDMixin, LoraMixin, PrefixTuningMixin, PromptTuningMixin
from sat.model.official import BertModel, GPT2Model, LLaMAModel

VOCAB, HIDDEN, HEADS, KV_HEADS, LAYERS, SEQ = 96, 32, 4, 2, 2, 12
IDS = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
PROMPT_LEN = 4

FAMILIES = {
    "gpt2": (GPT2Model, {}),
    "llama-gqa": (LLaMAModel, dict(num_multi_query_heads=KV_HEADS, use_bias=False)),
    "bert": (BertModel, dict(layernorm_order="post")),
}


def tiny(family: str, seed: int = 0, **kwargs) -> tuple[torch.nn.Module, argparse.Namespace]:
    """A 2-layer, hidden-32 model of ``family`` without dropout; ``kwargs`` go to its constructor."""
    model_cls, overrides = FAMILIES[family]
    return tiny_model(model_cls, overrides, seed, **kwargs)


def tiny_model(model_cls: type, overrides: dict, seed: int = 0, **kwargs) -> tuple[torch.nn.Module, argparse.Namespace]:
    """``tiny`` for any model class, with argument ``overrides`` (a family outside ``FAMILIES``)."""
    args = model_cls.get_args(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        vocab_size=VOCAB,
        max_sequence_length=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **overrides,
    )
    torch.manual_seed(seed)
    model = model_cls(args, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(5.0)  # sharper than a fresh init, more like a trained model
    return model, args


def mask(family: str):
    return None if family == "bert" else -1  # BERT attends both ways, the others causally


def positions(family: str, ids: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` positions 0, 1, ...; for ChatGLM GLM's 2-D ``[b, 2, s]`` (block positions 0)."""
    flat = torch.arange(ids.shape[1]).expand_as(ids)
    return torch.stack((flat, torch.zeros_like(flat)), dim=1) if family == "chatglm" else flat


def logits(model: torch.nn.Module, family: str, ids: torch.Tensor = IDS) -> torch.Tensor:
    return model(ids, positions(family, ids), mask(family))[0]  # [b, s, vocab]


def kv_heads(family: str) -> int:
    return KV_HEADS if family == "llama-gqa" else HEADS


# name -> (build the mixin for a family, add it with reinit, patterns of its trainable parameters,
# learning rate: prompts need a large one, as in Lester et al., 2021)
MIXINS: dict[str, tuple[Callable[[str], object], bool, list[str], float]] = {
    "prefix": (
        lambda family: PrefixTuningMixin(LAYERS, HIDDEN // HEADS, kv_heads(family), 3),
        False,
        [r"mixins\.prefix\."],
        0.1,
    ),
    "prompt": (lambda family: PromptTuningMixin(PROMPT_LEN, HIDDEN), True, [r"mixins\.prompt\."], 0.3),
    "lora": (lambda family: LoraMixin(LAYERS, r=4, lora_alpha=8), True, ["matrix_A", "matrix_B"], 1e-2),
    "adapter": (lambda family: AdapterMixin(LAYERS, HIDDEN, 8), True, [r"mixins\.adapter\."], 1e-2),
    "ffadd": (lambda family: FFADDMixin(HIDDEN, LAYERS, r=4), False, [r"mixins\.ffadd\."], 1e-2),
}


def with_mixin(family: str, name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model of ``family`` with mixin ``name`` added (as the mixin's docs say)."""
    model, _ = tiny(family, seed)
    build, reinit, *_ = MIXINS[name]
    model.add_mixin(name, build(family), reinit=reinit)
    return model


def inputs(model: torch.nn.Module) -> torch.Tensor:
    """``IDS``, after the virtual tokens when the model has a prompt."""
    if "prompt" not in model.mixins:
        return IDS
    virtual = model.get_mixin("prompt").virtual_token_ids().expand(IDS.shape[0], PROMPT_LEN)
    return torch.cat((virtual, IDS), dim=1)


def task_loss(model: torch.nn.Module, family: str) -> torch.Tensor:
    """Predict each next token of ``IDS`` (outputs at virtual tokens left out)."""
    ids = inputs(model)
    out = logits(model, family, ids)[:, ids.shape[1] - SEQ :]  # [b, SEQ, vocab]
    return F.cross_entropy(out[:, :-1].reshape(-1, VOCAB), IDS[:, 1:].reshape(-1))


def train(model: torch.nn.Module, family: str, steps: int = 15, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps on ``task_loss`` over the trainable parameters; the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = task_loss(model, family)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
