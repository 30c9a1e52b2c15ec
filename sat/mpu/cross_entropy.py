"""Cross entropy over logits whose vocabulary dimension is split across model-parallel ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sat.mpu.initialize import (
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_world_size,
)
from sat.mpu.utils import VocabUtility


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        group = get_model_parallel_group()
        logits = logits.float()
        # Subtract the global max for stability.
        logits_max = logits.max(dim=-1, keepdim=True)[0]
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        logits = logits - logits_max  # [..., vocab / mp]

        vocab_per_partition = logits.size(-1)
        start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(
            vocab_per_partition, get_model_parallel_rank(), get_model_parallel_world_size()
        )
        outside = (target < start) | (target >= end)
        local_target = (target - start).masked_fill(outside, 0)
        predicted = logits.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        dist.all_reduce(predicted, group=group)

        exp_logits = logits.exp()
        sum_exp = exp_logits.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        loss = sum_exp.log() - predicted  # [...]

        softmax = exp_logits / sum_exp.unsqueeze(-1)
        ctx.save_for_backward(softmax, outside, local_target)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        softmax, outside, local_target = ctx.saved_tensors
        grad = softmax.clone()
        # d loss / d logit = softmax - one_hot(target), the one-hot only on the owning rank.
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -(~outside).unsqueeze(-1).to(grad.dtype))
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
