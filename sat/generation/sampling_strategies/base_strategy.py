"""``BaseStrategy``: sampling (or greedy choice) of the next token, row by row."""

from __future__ import annotations

import torch
import torch.distributed as dist

from sat.generation.sampling_strategies.logits_processing import (
    apply_repetition_penalty,
    mask_tokens,
    top_k_logits,
)
from sat.mpu import get_model_parallel_group, get_model_parallel_src_rank, get_model_parallel_world_size


def broadcast_choice(tokens: torch.Tensor) -> torch.Tensor:
    """Make every model-parallel rank continue with model-parallel rank 0's choice."""
    if get_model_parallel_world_size() > 1:
        dist.broadcast(tokens, get_model_parallel_src_rank(), group=get_model_parallel_group())
    return tokens


class BaseStrategy:
    """Choose the next token of every row.

    Args:
        invalid_slices: token ids (or slices) never to produce.
        temperature: softmax temperature for sampling.
        top_k: sample among the ``top_k`` most likely tokens (``1`` = greedy, ``0`` = no limit).
        eps: kept for compatibility.
        top_p: nucleus sampling mass (``0`` = no limit); independent of ``top_k``.
        repetition_penalty: ``> 1`` makes tokens already in the sequence less likely.
        end_tokens: ids that end a row. A finished row keeps producing ``pad_token_id`` (the
            first end token by default) while the others go on; ``is_done`` once all rows end.
        pad_token_id: what finished rows produce.
    """

    def __init__(
        self,
        invalid_slices=(),
        temperature: float = 1.0,
        top_k: int = 200,
        eps: float = 1e-4,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        end_tokens=None,
        pad_token_id: int | None = None,
    ):
        self.invalid_slices = list(invalid_slices)
        self.temperature = temperature
        self.topk = top_k
        self.top_p = top_p
        self.eps = eps
        self.repetition_penalty = repetition_penalty
        self.end_tokens = list(end_tokens or [])
        self.pad_token_id = pad_token_id if pad_token_id is not None else (self.end_tokens or [0])[0]
        self._finished: torch.Tensor | None = None

    @property
    def is_done(self) -> bool:
        return self._finished is not None and bool(self._finished.all())

    def process_logits(self, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        """The distribution's logits after penalties, forbidden tokens, temperature and top-k/top-p."""
        logits = apply_repetition_penalty(logits.float(), tokens, self.repetition_penalty)
        logits = mask_tokens(logits, self.invalid_slices)
        return top_k_logits(logits / temperature, self.topk, self.top_p)

    def forward(self, logits, tokens, mems, temperature=None, nan_default_token=None):
        """Append one token to every row of ``tokens [b, s]`` given ``logits [b, vocab]``."""
        if nan_default_token is not None:
            nan_rows = torch.isnan(logits).any(dim=-1, keepdim=True)
            forced = torch.full_like(logits, -float("inf")).index_fill_(-1, torch.tensor([nan_default_token]), 0.0)
            logits = torch.where(nan_rows, forced, logits)
        elif torch.isnan(logits).any():
            raise ValueError("NaN in logits; pass nan_default_token to BaseStrategy.forward to continue anyway")
        if self.topk == 1 and not self.invalid_slices and self.repetition_penalty == 1.0:
            pred = logits.argmax(dim=-1)  # greedy: no sort, no softmax
        else:
            processed = self.process_logits(logits, tokens, temperature or self.temperature)
            if self.topk == 1:
                pred = processed.argmax(dim=-1)
            else:
                pred = torch.multinomial(torch.softmax(processed, dim=-1), num_samples=1).squeeze(-1)
        pred = broadcast_choice(pred)
        if self._finished is None or self._finished.shape[0] != pred.shape[0]:
            self._finished = torch.zeros_like(pred, dtype=torch.bool)
        pred = pred.masked_fill(self._finished, self.pad_token_id)
        if self.end_tokens:
            self._finished = self._finished | torch.isin(pred, torch.tensor(self.end_tokens, device=pred.device))
        return torch.cat((tokens, pred.unsqueeze(-1)), dim=1), mems

    def finalize(self, tokens, mems):
        """End of generation: reset the per-row state and return ``(tokens, mems)``."""
        self._finished = None
        return tokens, mems
