"""One checkpoint tensor to the dtype and device the model wants, without keeping its source.

A memory-mapped checkpoint tensor that is converted (fp32 to bf16) or moved (to a GPU) is read
once; the file pages it touched would stay in the process's resident set next to the converted
copy, so converting a whole fp32 model to bf16 would peak at 1.5x the bf16 size. Tensors are
therefore converted in chunks (most in one), and each chunk's source pages are released once
copied (``sat.checkpoint.page_release``): the peak is the converted model plus one chunk.
"""

from __future__ import annotations

import torch

from sat.checkpoint.page_release import release_pages

_CHUNK_BYTES = 32 * 2**20  # source bytes converted per step: the extra peak of a conversion


def convert_tensor(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``tensor.to(device=device, dtype=dtype)``, bitwise the same values; ``tensor`` itself when
    nothing changes. A CPU source is copied a chunk at a time in memory order, each chunk's pages
    dropped from memory after its copy. The result keeps the source's layout, as ``.to`` does: a
    transposed view (an HF Conv1D weight saved as sat's ``[out, in]``) stays one, which matrix
    products take as it is, where making it contiguous would cost a second pass over it."""
    if tensor.dtype == dtype and tensor.device == device:
        return tensor
    if tensor.device.type != "cpu":
        return tensor.to(device=device, dtype=dtype)
    if tensor.is_contiguous():
        return _convert_contiguous(tensor, dtype, device)
    order = sorted(range(tensor.dim()), key=lambda dim: -tensor.stride(dim))
    in_memory_order = tensor.permute(order)
    if not in_memory_order.is_contiguous():  # overlapping or gapped strides: no dense block to page out
        return tensor.to(device=device, dtype=dtype)
    converted = _convert_contiguous(in_memory_order, dtype, device)
    return converted.permute(sorted(range(tensor.dim()), key=order.__getitem__))


def _convert_contiguous(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(tensor.shape, dtype=dtype, device=device)
    source, target = tensor.view(-1), out.view(-1)  # [numel] each
    step = max(1, _CHUNK_BYTES // tensor.element_size())
    for start in range(0, source.numel(), step):
        chunk = source[start : start + step]
        target[start : start + step].copy_(chunk)
        release_pages(chunk)
    if source.numel() > step:
        # Pages that straddled chunk boundaries, and pages of earlier chunks that the kernel's
        # fault-around mapped again while it read the next one.
        release_pages(source)
    return out
