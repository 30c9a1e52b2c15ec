"""What of a file is in the kernel's page cache (``mincore``), and dropping it from there: for
tests of what a load reads from disk and what it keeps resident."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import torch

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def _cached(address: int, length: int) -> int:
    """Pages of the page-aligned mapping at ``address`` that are in the page cache."""
    flags = (ctypes.c_ubyte * (-(-length // mmap.PAGESIZE)))()
    assert _libc.mincore(address, length, flags) == 0, os.strerror(ctypes.get_errno())
    return sum(flag & 1 for flag in flags)


def cached_pages(path) -> int:
    """How many pages of the file at ``path`` are in the page cache (``mincore`` on a fresh
    mapping that is never read, so the count is not changed by looking)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # writable, for ctypes' address
    start = ctypes.c_char.from_buffer(mapping)
    try:
        return _cached(ctypes.addressof(start), size)
    finally:
        del start
        mapping.close()


def cached_tensor_pages(tensor: torch.Tensor) -> int:
    """How many pages of a file-mapped dense ``tensor`` are in the page cache, whether or not this
    process maps them."""
    begin = tensor.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
    return _cached(begin, tensor.data_ptr() + tensor.numel() * tensor.element_size() - begin)


def dropped_from_page_cache(path) -> bool:
    """Write the file at ``path`` out and drop it from the page cache; False where its pages
    stay (a file system such as tmpfs, whose page cache is the file)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return cached_pages(path) == 0
