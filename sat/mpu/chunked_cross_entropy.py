"""Cross entropy from hidden states and the output head, a chunk of tokens at a time.

The plain loss computes ``logits = hidden @ weight.T`` for the whole batch, upcasts them to
fp32 and keeps the softmax for backward: with a 128k vocabulary, 2 x 1024 tokens already make
1 GiB of fp32 logits, several copies of which are alive at once. Here the logits of
``chunk_size`` tokens exist at any time: the forward keeps only each token's log-normaliser,
and the backward recomputes each chunk's logits to form its gradient. That costs one more
``[chunk, h] x [h, vocab]`` product per chunk; the loss and gradients are the plain ones.

With model parallelism ``weight`` is this rank's vocabulary shard ``[vocab / mp, h]`` (the
layout of ``VocabParallelEmbedding`` and of column-parallel heads) and each chunk goes through
the same all-reduces as ``vocab_parallel_cross_entropy``.
"""

from __future__ import annotations

import torch

from sat.mpu.cross_entropy import shard_target, subtract_target, vocab_shard_loss
from sat.mpu.mappings import copy_to_model_parallel_region
from sat.ops.linear import linear

_REDUCTIONS = ("mean", "sum", "none")


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk_size: int, ignore_index: int):
        # hidden [n, h], weight [vocab / mp, h], bias [vocab / mp] or None, target [n]
        losses, normalisers = [], []
        for start in range(0, hidden.shape[0], chunk_size):
            logits = linear(hidden[start : start + chunk_size], weight, bias)  # [chunk, vocab / mp]
            shard = vocab_shard_loss(logits, target[start : start + chunk_size], overwrite=True)
            losses.append(shard.loss)
            normalisers.append(shard.log_normaliser)
        ignored = target == ignore_index
        ctx.save_for_backward(hidden, weight, bias, target, torch.cat(normalisers), ignored)
        ctx.chunk_size = chunk_size
        return torch.cat(losses).masked_fill(ignored, 0.0)  # [n], fp32

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, target, normalisers, ignored = ctx.saved_tensors
        grad_loss = grad_loss.masked_fill(ignored, 0.0)  # [n]
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        # Summed over chunks in fp32 whatever the weight's dtype, as one product would.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            chunk = hidden[rows]  # [chunk, h]
            logits = linear(chunk, weight, bias).float()  # [chunk, vocab / mp]
            softmax = logits.sub_(normalisers[rows, None]).exp_()  # [chunk, vocab / mp]
            grad_logits = subtract_target(softmax, *shard_target(target[rows], weight.shape[0]))
            grad_logits *= grad_loss[rows, None]
            if needs_hidden:
                grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight  # [chunk, h]
            if needs_weight:
                grad_weight.addmm_(grad_logits.t(), chunk.float())  # [vocab / mp, h]
            if needs_bias:
                grad_bias += grad_logits.sum(0)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross entropy of the logits ``hidden @ weight.T + bias`` against ``labels``, without
    ever holding the logits of more than ``chunk_size`` tokens.

    ``hidden [..., h]`` are the states the output head reads (after the final norm);
    ``weight [vocab / mp, h]`` (and ``bias [vocab / mp]``) this rank's rows of the head;
    ``labels [...]`` full-vocabulary ids aligned with ``hidden``, ``ignore_index`` where no loss
    is wanted. ``reduction``: ``"mean"`` over the tokens not ignored (as ``F.cross_entropy``),
    ``"sum"``, or ``"none"`` (fp32 losses shaped like ``labels``, 0 where ignored). Gradients
    flow to ``hidden``, ``weight`` and ``bias``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match hidden {tuple(hidden.shape)} without its last dimension"
        )
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} differs from the head weight's {tuple(weight.shape)}")
    # Identity forward; in backward, sums the hidden gradient of the ranks' vocabulary shards.
    hidden = copy_to_model_parallel_region(hidden).reshape(-1, hidden.shape[-1])  # [n, h]
    losses = _ChunkedCrossEntropy.apply(hidden, weight, bias, labels.reshape(-1), chunk_size, ignore_index)  # [n]
    if reduction == "none":
        return losses.view(labels.shape)
    total = losses.sum()
    return total if reduction == "sum" else total / (labels != ignore_index).sum()
