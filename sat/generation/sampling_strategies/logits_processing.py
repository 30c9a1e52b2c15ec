"""Adjustments applied to next-token logits before a token is chosen."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_k_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0, filter_value: float = -float("inf")
) -> torch.Tensor:
    """Filter ``logits [b, vocab]`` to the ``top_k`` largest (0: no limit), then to the smallest
    set of those whose probability reaches ``top_p`` (0: no limit). The two filters are
    independent; each keeps at least one token. Returns a new tensor."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # [b, 1]
        logits = logits.masked_fill(logits < kth, filter_value)
    if top_p > 0.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # A token goes when the more probable tokens before it already reach top_p.
        remove = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(remove, filter_value))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already in ``tokens [b, s]`` less likely: positive logits are divided
    by ``penalty``, negative ones multiplied (the CTRL / transformers convention)."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, tokens)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, tokens, seen)


def mask_tokens(logits: torch.Tensor, slices: Sequence, filter_value: float = -float("inf")) -> torch.Tensor:
    """Forbid the token ids (or slices of ids) in ``slices``."""
    if not slices:
        return logits
    logits = logits.clone()
    for item in slices:
        logits[..., item] = filter_value
    return logits


def ban_repeated_ngrams(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid any token that would repeat an ``n``-gram already in the row's ``tokens``."""
    if n <= 0 or tokens.shape[-1] < n:
        return logits
    logits = logits.clone()
    for row, sequence in enumerate(tokens.tolist()):
        prefix = tuple(sequence[len(sequence) - n + 1 :]) if n > 1 else ()
        banned = {sequence[i + n - 1] for i in range(len(sequence) - n + 1) if tuple(sequence[i : i + n - 1]) == prefix}
        if banned:
            logits[row, list(banned)] = -float("inf")
    return logits
