"""Handing the pages of a memory-mapped checkpoint tensor back to the kernel once it was read.

Pages of a memory-mapped file that the process read stay in its resident set (they count in RSS
and ``VmHWM``) until unmapped. A loader that converts each tensor (fp32 to bf16, or to a GPU)
would otherwise hold the whole file next to the converted model, so it releases each source
range right after reading it.

``MADV_DONTNEED`` only drops the process's mapping of a page: a page of the file stays in the
page cache (the next load finds it there) and a later read maps it again, so the tensor's values
stay readable. On memory the process owns (an anonymous page, or a page of a private file
mapping that was written to) it would discard the data, so every page's kind is read first from
``/proc/self/pagemap``: a range of file (or shared) pages gets ``MADV_DONTNEED``; a range that
mixes in pages of the process's own gets ``MADV_PAGEOUT``, which keeps every page's data (in the
file or in swap) but also evicts the file's pages from the page cache; a range of anonymous
memory is left alone (its owner frees it). Off Linux, or without ``/proc``, this is a no-op.

The other way round, ``ReadAhead`` asks the kernel to read the next tensors' pages into the page
cache while the current one converts (``MADV_WILLNEED``, which maps nothing into the process):
on a checkpoint not in the page cache, the disk then works while the CPU converts, instead of
each tensor waiting for its pages when first touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys

import torch

_MADV_WILLNEED = 3
_MADV_DONTNEED = 4
_MADV_PAGEOUT = 21  # Linux 5.4+
# A pagemap entry's top byte (bits 56-63 of the native-endian 64-bit word): bit 7 present,
# 6 swapped, 5 file page or shared. Each page is classed as the process's own memory (b"a"),
# the file's (b"f") or not in memory (b"-") with one bytes.translate, not a tensor op per test.
PRESENT, _SWAPPED, _FILE_OR_SHARED = 0x80, 0x40, 0x20
_TOP_BYTE = 7 if sys.byteorder == "little" else 0
_CLASSES = bytes(
    ord("f") if flags & _FILE_OR_SHARED else ord("a") if flags & (PRESENT | _SWAPPED) else ord("-")
    for flags in range(256)
)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
if _libc is not None:
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_pagemap: tuple[int, int] | None = None  # (pid, descriptor of its /proc/self/pagemap), opened on first use
_WILLNEED_BYTES = 8 * 2**20  # one MADV_WILLNEED reads at most the device's read-ahead size (8 MiB here)


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the whole pages inside a dense CPU ``tensor``'s memory from this process's resident
    set, keeping its values readable; a no-op for anything else."""
    if _libc is None or tensor.device.type != "cpu" or not tensor.is_contiguous() or not tensor.numel():
        return
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # pages shared with a neighbour stay
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return
    flags = page_flags(first, last)
    if flags is None:  # no pagemap to read: the advice that is safe on every page
        advice = _MADV_PAGEOUT
    else:
        classes = flags.translate(_CLASSES)
        if b"a" not in classes:
            advice = _MADV_DONTNEED  # file pages, or pages not mapped at all
        elif b"f" in classes:
            advice = _MADV_PAGEOUT
        else:
            return
    _libc.madvise(first, last - first, advice)


def page_flags(first: int, last: int) -> bytes | None:
    """The pagemap flag byte (``PRESENT``, swapped, file-or-shared) of each page in the
    page-aligned range ``[first, last)``, or None where ``/proc/self/pagemap`` cannot be read."""
    global _pagemap
    try:
        if _pagemap is None or _pagemap[0] != os.getpid():  # a forked child must not read its parent's
            _pagemap = (os.getpid(), os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC))
        pages = (last - first) // mmap.PAGESIZE
        entries = os.pread(_pagemap[1], pages * 8, first // mmap.PAGESIZE * 8)
    except OSError:
        return None
    if len(entries) != pages * 8:
        return None
    return entries[_TOP_BYTE::8]  # [pages]


class ReadAhead:
    """Keeps ``MADV_WILLNEED`` asked for the CPU tensors of ``tensors`` (in the order they will be
    read) up to ``lead_bytes`` beyond what ``consumed`` was told has been read."""

    def __init__(self, tensors: list[torch.Tensor], lead_bytes: int = 256 * 2**20):
        self._tensors = [t for t in tensors if _libc is not None and t.device.type == "cpu" and t.numel()]
        self._lead = lead_bytes
        self._next = 0  # the first tensor not advised yet
        self._advised = 0  # bytes advised so far
        self._consumed = 0

    def consumed(self, tensor: torch.Tensor | None = None) -> None:
        """``tensor`` (one of ``tensors``) has been read; advise further ahead."""
        if tensor is not None:
            self._consumed += tensor.numel() * tensor.element_size()
        while self._next < len(self._tensors) and self._advised - self._consumed < self._lead:
            tensor = self._tensors[self._next]
            self._next += 1
            begin = tensor.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
            end = tensor.data_ptr() + _extent(tensor)
            for start in range(begin, end, _WILLNEED_BYTES):
                stop = min(start + _WILLNEED_BYTES, end)
                # Asking for cached pages still walks them (0.07 s per 1.5 GiB): a window whose last
                # page is cached is taken as read (its first may be a neighbour's, read with it).
                if not _cached((stop - 1) // mmap.PAGESIZE * mmap.PAGESIZE):
                    _libc.madvise(start, stop - start, _MADV_WILLNEED)
            self._advised += tensor.numel() * tensor.element_size()


def _cached(page: int) -> bool:
    """Whether the page at address ``page`` (of a file mapping) is in the page cache."""
    flag = ctypes.c_ubyte()
    return _libc.mincore(page, mmap.PAGESIZE, ctypes.byref(flag)) == 0 and bool(flag.value & 1)


def _extent(tensor: torch.Tensor) -> int:
    """Bytes from ``tensor``'s first element to the end of its last (a transposed view's too)."""
    return (sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride())) + 1) * tensor.element_size()
