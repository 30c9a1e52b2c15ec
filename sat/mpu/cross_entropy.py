"""Cross entropy over logits whose vocabulary dimension is split across model-parallel ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sat.mpu.initialize import (
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_world_size,
)
from sat.mpu.utils import VocabUtility


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """``tensor`` reduced in place over the model-parallel group (nothing to do at size 1)."""
    if get_model_parallel_world_size() > 1:
        dist.all_reduce(tensor, op=op, group=get_model_parallel_group())
    return tensor


@dataclass
class VocabShardLoss:
    """The per-token cross entropy of one rank's logits shard and what its gradient needs.

    ``loss``, ``log_normaliser`` (the global log-sum-exp of the logits) ``[...]``;
    ``exp_logits [..., vocab / mp]`` (exp of the logits minus their global max) and ``sum_exp
    [...]`` (its global sum over the vocabulary);
    ``outside [...]`` (the target is not in this rank's shard) and ``local_target [...]`` (its
    index in the shard, 0 where outside)."""

    loss: torch.Tensor
    log_normaliser: torch.Tensor
    exp_logits: torch.Tensor
    sum_exp: torch.Tensor
    outside: torch.Tensor
    local_target: torch.Tensor


def shard_target(target: torch.Tensor, vocab_per_partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each of ``target``'s full-vocabulary ids lies outside this rank's shard, and its
    index in the shard (0 where outside)."""
    start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(
        vocab_per_partition, get_model_parallel_rank(), get_model_parallel_world_size()
    )
    outside = (target < start) | (target >= end)
    return outside, (target - start).masked_fill(outside, 0)


def vocab_shard_loss(logits: torch.Tensor, target: torch.Tensor, overwrite: bool = False) -> VocabShardLoss:
    """Cross entropy of ``logits [..., vocab / mp]`` (any dtype; computed in fp32) for ``target
    [...]`` (full-vocabulary ids), all-reduced over the model-parallel group. With
    ``overwrite`` fp32 ``logits`` become ``exp_logits`` in place, saving two copies of them."""
    logits = logits.float()
    # Subtract the global max for stability.
    logits_max = _all_reduce(logits.max(dim=-1, keepdim=True)[0], dist.ReduceOp.MAX)  # [..., 1]
    logits = logits.sub_(logits_max) if overwrite else logits - logits_max  # [..., vocab / mp]

    outside, local_target = shard_target(target, logits.size(-1))
    predicted = _all_reduce(logits.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0))

    exp_logits = logits.exp_() if overwrite else logits.exp()
    sum_exp = _all_reduce(exp_logits.sum(dim=-1))  # [...]
    log_sum_exp = sum_exp.log()
    loss = log_sum_exp - predicted  # [...]
    return VocabShardLoss(loss, log_sum_exp + logits_max.squeeze(-1), exp_logits, sum_exp, outside, local_target)


def subtract_target(softmax: torch.Tensor, outside: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
    """``softmax - one_hot(target)`` in place (the one-hot only on the rank owning the target):
    the gradient of the loss with respect to the logits."""
    return softmax.scatter_add_(-1, local_target.unsqueeze(-1), -(~outside).unsqueeze(-1).to(softmax.dtype))


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shard = vocab_shard_loss(logits, target)
        softmax = shard.exp_logits / shard.sum_exp.unsqueeze(-1)  # [..., vocab / mp]
        ctx.save_for_backward(softmax, shard.outside, shard.local_target)
        return shard.loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        softmax, outside, local_target = ctx.saved_tensors
        grad = subtract_target(softmax.clone(), outside, local_target)
        return grad * grad_output.unsqueeze(-1), None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy (same shape as ``target``) of logits ``[..., vocab / mp]``.

    Use it with ``parallel_output=True`` so the logits are not gathered first. Without model
    parallelism it is ``F.cross_entropy(..., reduction='none')`` computed in fp32.
    """
    if get_model_parallel_world_size() == 1:
        flat = vocab_parallel_logits.reshape(-1, vocab_parallel_logits.size(-1)).float()
        return F.cross_entropy(flat, target.reshape(-1), reduction="none").view_as(target)
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target)
