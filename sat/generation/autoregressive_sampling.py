"""Autoregressive generation: ``filling_sequence`` and friends (the original library's API).

``seq`` is a 1-D token tensor: the prompt, then ``-1`` for every position to generate; a
non-negative id after the prompt is forced (blank filling). The model must carry a
``CachedAutoregressiveMixin`` (as its last attention mixin): each step feeds only the new
tokens and the cache supplies the rest. Everything runs under ``torch.no_grad``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import torch

from sat.generation.sampling_strategies.base_strategy import BaseStrategy
from sat.generation.weight_layout import lay_out_for_decoding_
from sat.model.cached_autoregressive_model import KVCache

MasksAndPositions = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def get_masks_and_position_ids_default(seq: torch.Tensor):
    """``tokens [1, L]``, a causal ``attention_mask [1, 1, L, L]`` and ``position_ids [1, L]``."""
    tokens = seq.unsqueeze(0)
    attention_mask = torch.ones(1, 1, len(seq), len(seq), device=seq.device).tril_()
    position_ids = torch.arange(len(seq), dtype=torch.long, device=seq.device).unsqueeze(0)
    return tokens, attention_mask, position_ids


def update_mems(hiddens: list[torch.Tensor] | None, mems: torch.Tensor | None, max_memory_length: int):
    """The original library's cache update: append the layers' new ``mem_kv``
    (``[b, s, 2h]`` each) to ``mems [layers, b, mem, 2h]``, keeping the last ``max_memory_length``."""
    if hiddens is None:
        return None
    hiddens = torch.stack(hiddens)  # [layers, b, s, 2h]
    if mems is None:
        return hiddens[:, :, -max_memory_length:]
    if mems.shape[1] < hiddens.shape[1]:
        mems = mems.expand(-1, hiddens.shape[1], -1, -1)
    return torch.cat((mems, hiddens), dim=2)[:, :, -max_memory_length:]


def _context_length(seq: torch.Tensor) -> int:
    if seq.dim() != 1:
        raise ValueError(f"seq must be 1-D (prompt then -1 for each position to generate), got {tuple(seq.shape)}")
    generate = (seq < 0).nonzero()
    length = int(generate[0]) if len(generate) else len(seq)
    if length == 0:
        raise ValueError("seq must start with at least one prompt token")
    return length


def _num_layers(model: torch.nn.Module) -> int:
    return len(model.transformer.layers)


def _expand_batch(tokens: torch.Tensor, mems, batch_size: int):
    tokens = tokens.expand(batch_size, -1)
    if isinstance(mems, KVCache):
        mems.expand_batch(batch_size)
    elif mems is not None and mems.shape[1] < batch_size:
        mems = mems.expand(-1, batch_size, -1, -1)
    return tokens, mems


@torch.no_grad()
def stream_filling_sequence(
    model: torch.nn.Module,
    seq: torch.Tensor,
    batch_size: int,
    strategy=None,
    max_memory_length: int = 100000,
    log_attention_weights: torch.Tensor | None = None,
    get_masks_and_position_ids: MasksAndPositions = get_masks_and_position_ids_default,
    mems=None,
    **kw_args,
) -> Iterator[tuple[torch.Tensor, object]]:
    """Generate like ``filling_sequence``, yielding ``(tokens [b, s], mems)`` after every step;
    the caller ends with ``strategy.finalize(tokens, mems)``.

    ``batch_size`` samples of the same prompt are generated (raised to ``strategy.num_beams``
    for beam search). ``mems`` continues an earlier generation: a ``KVCache`` (what this function
    creates) or the original's packed tensor (``max_memory_length`` applies to that form only).
    Extra keywords (``encoder_outputs``, ``cross_attention_mask``...) go to the model.
    """
    strategy = strategy if strategy is not None else BaseStrategy()
    context_length = _context_length(seq)
    batch_size = max(batch_size, getattr(strategy, "num_beams", 1))
    lay_out_for_decoding_(model, batch_size)  # every step after the prompt multiplies batch_size rows
    tokens, attention_mask, position_ids = get_masks_and_position_ids(seq)
    tokens = tokens[..., :context_length]
    # The default masks are plain causal: let the backbone build them (SDPA-eligible).
    causal = get_masks_and_position_ids is get_masks_and_position_ids_default
    if not causal and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.type_as(next(model.parameters()))
    if mems is None:
        mems = KVCache(_num_layers(model), capacity=len(seq))
    index = mems.length if isinstance(mems, KVCache) else mems.shape[2]
    if index >= context_length:
        raise ValueError(
            f"mems already hold {index} positions; they may cover at most the prompt without its last "
            f"token ({context_length - 1}), which the next forward feeds"
        )
    if hasattr(strategy, "start"):
        strategy.start(context_length, len(seq))
    counter = context_length - 1  # the last position whose token is known
    pending = False
    while counter < len(seq) - 1:
        if seq[counter + 1] >= 0:  # a forced token
            tokens = torch.cat((tokens, seq[counter + 1 : counter + 2].expand(tokens.shape[0], 1)), dim=1)
            counter += 1
            pending = True
            continue
        weights = log_attention_weights
        if weights is not None:
            weights = weights[..., index : counter + 1, : counter + 1]
        logits, *outputs = model(
            tokens[:, index:],
            position_ids[..., index : counter + 1],
            -1 if causal else attention_mask[..., index : counter + 1, : counter + 1],
            mems=mems,
            log_attention_weights=weights,
            last_logits_only=True,
            **kw_args,
        )
        mems = _advance_cache(mems, outputs, counter + 1, max_memory_length)
        if outputs and "mem_cross" in outputs[0]:  # encoder-decoder: reuse the encoder's keys/values
            kw_args["encoder_outputs"] = [out["mem_cross"] for out in outputs]
        index = counter + 1
        tokens, mems = _expand_batch(tokens, mems, batch_size)
        logits = logits[:, -1].expand(batch_size, -1)  # [b, vocab]: the one position computed
        tokens, mems = strategy.forward(logits, tokens, mems)
        counter += 1
        pending = False
        yield tokens, mems
        if strategy.is_done:
            return
    if pending:  # trailing forced tokens after the last generated one
        yield _expand_batch(tokens, mems, batch_size)


def _advance_cache(mems, outputs: list[dict], expected_length: int, max_memory_length: int):
    if isinstance(mems, KVCache):
        if mems.length != expected_length:
            raise RuntimeError(
                "the model filled no key/value cache: add the cache mixin last, e.g. "
                "model.add_mixin('auto-regressive', CachedAutoregressiveMixin())"
            )
        return mems
    if not outputs or "mem_kv" not in outputs[0]:
        raise RuntimeError("the model returned no 'mem_kv': add a CachedAutoregressiveMixin")
    return update_mems([out["mem_kv"] for out in outputs], mems, max_memory_length)


def filling_sequence(
    model: torch.nn.Module,
    seq: torch.Tensor,
    batch_size: int,
    strategy=None,
    max_memory_length: int = 100000,
    log_attention_weights: torch.Tensor | None = None,
    get_masks_and_position_ids: MasksAndPositions = get_masks_and_position_ids_default,
    mems=None,
    **kw_args,
):
    """Fill the ``-1`` positions of ``seq`` and return ``strategy.finalize(tokens, mems)``:
    ``(tokens [batch_size, len], mems)`` for ``BaseStrategy`` (default: sampling among the
    top 200), the finished beams for ``BeamSearchStrategy``. Arguments as
    ``stream_filling_sequence``."""
    strategy = strategy if strategy is not None else BaseStrategy()
    steps = stream_filling_sequence(
        model,
        seq,
        batch_size,
        strategy,
        max_memory_length,
        log_attention_weights,
        get_masks_and_position_ids,
        mems,
        **kw_args,
    )
    last = deque(steps, maxlen=1)  # run the generator, keep its final state
    if not last:  # nothing to generate
        last.append((seq.unsqueeze(0).expand(max(batch_size, getattr(strategy, "num_beams", 1)), -1), mems))
    return strategy.finalize(*last[0])


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    invalid_slices=(),
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of each token given the ones before it, where ``loss_mask`` is
    1 (tokens ``< 0`` are ignored): per sample mean (``reduction='mean'``, ``[b]``; not
    exponentiated) or per position (``'none'``, ``[b, s - 1]``)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    loss_mask = loss_mask.unsqueeze(0).expand(tokens.shape) if loss_mask.dim() == 1 else loss_mask
    loss_mask = loss_mask.float() * (tokens >= 0)
    tokens = tokens.clamp(min=0)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.type_as(next(model.parameters()))
    logits = model(tokens, position_ids, attention_mask)[0].float()  # [b, s, vocab]
    for invalid in invalid_slices:
        logits[..., invalid] = -float("inf")
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1) * loss_mask[:, 1:]  # [b, s - 1]
    if reduction == "none":
        return nll
    return nll.sum(dim=-1) / loss_mask[:, 1:].sum(dim=-1)
