"""One checkpoint tensor to the dtype and device the model wants, without keeping its source.

A memory-mapped checkpoint tensor that is converted (fp32 to bf16) or moved (to a GPU) is read
once; the file pages it touched would stay in the process's resident set (they count in RSS
and ``VmHWM``) next to the converted copy, so converting a whole fp32 model to bf16 would peak
at 1.5x the bf16 size. Tensors are therefore converted in chunks (most in one), and each chunk's
source pages are handed back to the kernel (``madvise(MADV_PAGEOUT)``) once copied: the peak is
the converted model plus one chunk. ``MADV_PAGEOUT`` keeps the data (a later read faults it back
in from the file, or from swap for anonymous memory), so it is safe on any tensor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch

_CHUNK_BYTES = 32 * 2**20  # source bytes converted per step: the extra peak of a conversion
_MADV_PAGEOUT = 21  # Linux 5.4+
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
if _libc is not None:
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def convert_tensor(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``tensor.to(device=device, dtype=dtype)``, bitwise the same values; ``tensor`` itself when
    nothing changes. A CPU source is copied a chunk at a time in memory order, each chunk's pages
    dropped from memory after its copy; the result is contiguous (a 12 MiB layer weight as much as a 200 MiB embedding:
    the small tensors are most of a model)."""
    if tensor.dtype == dtype and tensor.device == device:
        return tensor
    if tensor.device.type != "cpu":
        return tensor.to(device=device, dtype=dtype)
    if tensor.is_contiguous():
        return _convert_contiguous(tensor, dtype, device)
    # A transposed view (an HF Conv1D weight saved as sat's [out, in]): converted in memory
    # order, then made contiguous, the layout the model's matrix products are fastest on.
    order = sorted(range(tensor.dim()), key=lambda dim: -tensor.stride(dim))
    in_memory_order = tensor.permute(order)
    if not in_memory_order.is_contiguous():  # overlapping or gapped strides: no dense block to page out
        return tensor.to(device=device, dtype=dtype)
    converted = _convert_contiguous(in_memory_order, dtype, device)
    return converted.permute(sorted(range(tensor.dim()), key=order.__getitem__)).contiguous()


def _convert_contiguous(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(tensor.shape, dtype=dtype, device=device)
    source, target = tensor.view(-1), out.view(-1)  # [numel] each
    step = max(1, _CHUNK_BYTES // tensor.element_size())
    for start in range(0, source.numel(), step):
        chunk = source[start : start + step]
        target[start : start + step].copy_(chunk)
        _page_out(chunk)
    if source.numel() > step:
        _page_out(source)  # the pages (or larger page-cache folios) that straddled chunk boundaries
    return out


def release_pages(tensor: torch.Tensor) -> None:
    """Give the pages of a CPU ``tensor`` that was just read (written to the offload folder, say)
    back to the kernel; its values stay readable."""
    if tensor.device.type == "cpu" and tensor.is_contiguous():
        _page_out(tensor)


def _page_out(chunk: torch.Tensor) -> None:
    """Give the whole pages inside ``chunk``'s memory back to the kernel (no-op off Linux)."""
    if _libc is None:
        return
    begin = chunk.data_ptr()
    end = begin + chunk.numel() * chunk.element_size()
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # pages shared with a neighbour stay
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        _libc.madvise(first, last - first, _MADV_PAGEOUT)
