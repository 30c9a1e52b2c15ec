"""``F.linear`` for the backbone, with a faster CPU route for few rows.

On CPU, BLAS computes ``x @ W^T`` for an ``x`` of a few rows (decoding, small batches) up to 4x
slower than the same product as ``(W @ x^T)^T``, measured with torch 2.13 (bench/linear.py).
The result is identical up to float rounding, and is returned as a transposed view, which every
following op accepts (``sdpa_attention`` makes its inputs unit-stride for the fused kernels).
A weight stored column-major (a transposed view of ``[in, out]`` memory, as GPT-2 converted from
``transformers`` keeps it) takes ``F.linear``, already the fast order for that layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MAX_ROWS = 128  # beyond this both routes run at the same speed


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., in] @ weight[out, in]^T + bias`` -> ``[..., out]``."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    row_major = weight.stride(-1) == 1
    if x.device.type != "cpu" or x.dtype != torch.float32 or not row_major or not 0 < rows <= _MAX_ROWS:
        return F.linear(x, weight, bias)
    out = (weight @ x.reshape(rows, x.shape[-1]).t()).t()  # [rows, out], column-major
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def lay_out_for_rows_(weight: torch.nn.Parameter, rows: int) -> None:
    """Store a CPU fp32 ``[out, in]`` weight in the memory order fastest for ``linear`` over
    ``rows``-row inputs (bench/linear.py): ``[in, out]`` memory (a column-major view) for one
    row, where BLAS's product over it is about 12% faster, ``[out, in]`` memory otherwise, where
    ``linear``'s few-rows route is. Values are unchanged; only ``weight.data`` is replaced, once
    per change of order. A weight that is a view into a larger buffer (a flat ZeRO or FSDP
    parameter) is left alone: moving it would cut it off from that buffer.
    """
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        return
    column_major = rows == 1
    if weight.t().is_contiguous() if column_major else weight.is_contiguous():
        return
    if weight.untyped_storage().nbytes() != weight.numel() * weight.element_size():
        return
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t() if column_major else weight.data.contiguous()
