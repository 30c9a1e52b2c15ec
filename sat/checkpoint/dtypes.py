"""The dtype a model is loaded in: ``dtype=`` values (``None``, ``"auto"``, a ``torch.dtype`` or
its name), and the dtype a checkpoint's tensors were saved in."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Mapping

import torch

from sat.runtime import dtype_from_args

_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_FLOATING = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
DtypeArg = torch.dtype | str | None


def resolve_dtype(
    dtype: DtypeArg, args: argparse.Namespace, saved: Callable[[], torch.dtype], where: str = "dtype"
) -> torch.dtype:
    """The parameter dtype to load in: ``None`` follows ``args.fp16``/``args.bf16`` (float32
    otherwise, the original's rule); ``"auto"`` is ``saved()``, the checkpoint's own; a floating
    ``torch.dtype`` or one of its names (``"bfloat16"``, ``"bf16"``...) is itself."""
    if dtype is None:
        return dtype_from_args(args)
    if isinstance(dtype, str):
        if dtype == "auto":
            return saved()
        if dtype.removeprefix("torch.") in _NAMES:
            return _NAMES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype in _FLOATING:
        return dtype
    raise ValueError(
        f"{where}={dtype!r} is not a dtype to load in: use None (args.fp16/args.bf16), 'auto' (the "
        f"checkpoint's own), a floating torch.dtype, or one of {sorted(_NAMES)}"
    )


def saved_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype holding most of ``state``'s floating-point elements (float32 when it has none).
    Reads only the tensors' metadata: memory-mapped data is not touched."""
    counts: Counter[torch.dtype] = Counter()
    for tensor in state.values():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


def set_dtype_flags(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """Make ``args.fp16``/``args.bf16`` say ``dtype``, so the returned args describe the model."""
    args.fp16 = dtype == torch.float16
    args.bf16 = dtype == torch.bfloat16
