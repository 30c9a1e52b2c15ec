"""Generation for a batch of *different* prompts (the original library had none)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sat.generation.sampling_strategies.base_strategy import BaseStrategy
from sat.generation.weight_layout import lay_out_for_decoding_
from sat.model.cached_autoregressive_model import KVCache


@torch.no_grad()
def batch_filling_sequence(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int] | torch.Tensor],
    max_new_tokens: int,
    strategy: BaseStrategy | None = None,
    pad_token_id: int = 0,
    **kw_args,
) -> list[torch.Tensor]:
    """Continue every prompt by up to ``max_new_tokens`` tokens, all rows at once.

    Prompts are left-padded to a common length; padding is masked out and each row's positions
    start at 0, so a row generates what it would generate alone. A row stops at one of the
    strategy's ``end_tokens`` while the others go on. The model needs a
    ``CachedAutoregressiveMixin``.

    Args:
        prompts: token ids per prompt (lists or 1-D tensors), of any lengths.
        strategy: a ``BaseStrategy`` (default: greedy, ``top_k=1``).
        pad_token_id: the id written into padding (never attended to).
    Returns:
        Per prompt, a 1-D tensor: the prompt followed by its generated tokens, up to and
        including its end token.
    """
    strategy = strategy if strategy is not None else BaseStrategy(top_k=1)
    device = next(model.parameters()).device
    rows = [torch.as_tensor(prompt, dtype=torch.long, device=device).flatten() for prompt in prompts]
    if not rows or min(len(row) for row in rows) == 0:
        raise ValueError("batch_filling_sequence needs at least one prompt, and no empty prompt")
    width = max(len(row) for row in rows)
    total = width + max_new_tokens
    tokens = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    # Which keys are real, for every position the generation can reach, written once: a step's
    # mask is a view of it, never rebuilt.
    real = torch.ones(len(rows), 1, 1, total, dtype=torch.bool, device=device)  # [b, 1, 1, total]
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :] = row
        real[i, ..., : width - len(row)] = False
    positions = (real[:, 0, 0, :width].long().cumsum(-1) - 1).clamp(min=0)  # [b, width]; each row starts at 0
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    # In the model's dtype, 1 = attend: models that keep the original's convention read a bool
    # mask as True = masked (GLM-130B, ChatGLM2).
    dtype = next(model.parameters()).dtype
    mask = (causal & real[..., :width]).to(dtype)  # [b, 1, width, width]
    real = real.to(dtype)

    lay_out_for_decoding_(model, len(rows))  # every step after the prompts multiplies one row per prompt
    cache = KVCache(len(model.transformer.layers), capacity=total)
    logits = model(tokens, positions, mask, mems=cache, last_logits_only=True, **kw_args)[0][:, -1]  # [b, vocab]
    for step in range(max_new_tokens):
        tokens, cache = strategy.forward(logits, tokens, cache)
        if strategy.is_done or tokens.shape[1] == total:
            break
        step_mask = real[..., : tokens.shape[1]]  # [b, 1, 1, keys]: the new token sees every real key
        step_positions = positions[:, -1:] + step + 1  # [b, 1]
        logits = model(tokens[:, -1:], step_positions, step_mask, mems=cache, last_logits_only=True, **kw_args)
        logits = logits[0][:, -1]
    strategy.finalize(tokens, cache)
    return [_trim(tokens[i, width - len(row) :], len(row), strategy.end_tokens) for i, row in enumerate(rows)]


def _trim(sequence: torch.Tensor, prompt_length: int, end_tokens: list[int]) -> torch.Tensor:
    generated = sequence[prompt_length:]
    if end_tokens:
        ends = torch.isin(generated, torch.tensor(end_tokens, device=generated.device)).nonzero()
        if len(ends):
            return sequence[: prompt_length + int(ends[0]) + 1]
    return sequence
