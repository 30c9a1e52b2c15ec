"""The weights' memory order for decoding, chosen by how many rows each step multiplies."""

from __future__ import annotations

import torch

from sat.mpu import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from sat.ops.linear import lay_out_for_rows_


def lay_out_for_decoding_(model: torch.nn.Module, rows: int) -> None:
    """Put the weights of ``model``'s linear layers and vocabulary tables (the tied output head)
    in the memory order fastest for ``rows``-row products (``sat.ops.linear.lay_out_for_rows_``),
    however the model was built: sat's own layers are ``[out, in]``, GPT-2 translated from
    transformers keeps Conv1D's ``[in, out]``. A no-op on GPU and outside fp32, and once the
    order is right."""
    layers = (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)
    seen: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, layers) and isinstance(weight, torch.nn.Parameter) and id(weight) not in seen:
            seen.add(id(weight))
            lay_out_for_rows_(weight, rows)
