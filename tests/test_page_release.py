"""``sat.checkpoint.page_release``: the pages of a read checkpoint tensor leave the resident set,
its values never change, and the file stays in the page cache."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys

import pytest
import torch

from sat.checkpoint import conversion, page_release

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="madvise and /proc/self/pagemap are Linux's")
PAGES = 64


def _resident_pages(tensor: torch.Tensor) -> int:
    """How many of the pages wholly inside ``tensor`` are mapped in this process now."""
    begin = -(-tensor.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
    flags = page_release.page_flags(begin, end)
    assert flags is not None, "/proc/self/pagemap unreadable"
    return sum(1 for byte in flags if byte & page_release.PRESENT)


def _saved(tmp_path, values: torch.Tensor) -> torch.Tensor:
    """``values`` saved and loaded back memory-mapped (a private file mapping, as every load)."""
    torch.save({"w": values}, tmp_path / "w.pt")
    return torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)["w"]


def test_file_pages_are_unmapped_and_read_back_equal(tmp_path):
    values = torch.randn(PAGES * mmap.PAGESIZE // 4)
    mapped = _saved(tmp_path, values)
    assert torch.equal(mapped, values) and _resident_pages(mapped) >= PAGES - 1
    page_release.release_pages(mapped)
    assert _resident_pages(mapped) == 0
    assert torch.equal(mapped, values)


def _cached_pages(path) -> int:
    """How many pages of the file at ``path`` are in the page cache (``mincore`` on a fresh
    mapping that is never read, so the count is not changed by looking)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # writable, for ctypes' address
    start = ctypes.c_char.from_buffer(mapping)
    try:
        flags = (ctypes.c_ubyte * (-(-size // mmap.PAGESIZE)))()
        assert libc.mincore(ctypes.addressof(start), size, flags) == 0, os.strerror(ctypes.get_errno())
        return sum(flag & 1 for flag in flags)
    finally:
        del start
        mapping.close()


def test_released_file_pages_stay_in_the_page_cache(tmp_path):
    """``MADV_DONTNEED`` on file pages: the next load finds them in memory (``MADV_PAGEOUT``
    would have evicted them and sent it to the disk)."""
    mapped = _saved(tmp_path, torch.randn(PAGES * mmap.PAGESIZE // 4))
    mapped.sum()
    before = _cached_pages(tmp_path / "w.pt")
    page_release.release_pages(mapped)
    assert _resident_pages(mapped) == 0
    assert before >= PAGES and _cached_pages(tmp_path / "w.pt") == before


def test_pages_written_after_loading_keep_their_values(tmp_path):
    """A page of a private file mapping that was written to belongs to the process: dropping it
    would bring back the file's bytes. Its range is paged out instead, and reads stay equal."""
    mapped = _saved(tmp_path, torch.zeros(PAGES * mmap.PAGESIZE // 4))
    mapped[mmap.PAGESIZE : 2 * mmap.PAGESIZE] = 7.0  # one page and a bit, copied on write
    expected = mapped.clone()
    page_release.release_pages(mapped)
    assert torch.equal(mapped, expected)


def test_anonymous_memory_is_left_alone():
    values = torch.randn(PAGES * mmap.PAGESIZE // 4)
    expected = values.clone()
    page_release.release_pages(values)
    assert torch.equal(values, expected) and _resident_pages(values) >= PAGES - 1


def test_views_and_small_tensors_are_no_ops(tmp_path):
    mapped = _saved(tmp_path, torch.randn(256, 64))
    page_release.release_pages(mapped.t())  # not contiguous: nothing to hand back as one range
    page_release.release_pages(mapped[:1])  # inside one page
    page_release.release_pages(torch.empty(0))
    assert torch.equal(mapped, torch.load(tmp_path / "w.pt", weights_only=True)["w"])


@pytest.mark.parametrize("offset", [0, 4, 2], ids=["page-aligned", "element-aligned", "misaligned"])
def test_a_chunked_conversion_leaves_no_page_of_its_source_resident(tmp_path, monkeypatch, offset):
    """Converting fp32 to bf16 three pages and a bit at a time hands back every whole page of the
    source: also the pages straddling chunk boundaries and those of earlier chunks that the
    kernel's fault-around mapped again while reading the next. The values are bitwise ``.to``'s."""
    monkeypatch.setattr(conversion, "_CHUNK_BYTES", 3 * mmap.PAGESIZE + 4)
    values = torch.randn(PAGES * mmap.PAGESIZE // 4)
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(offset) + values.numpy().tobytes())
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private, as torch.load's mmap
    source = torch.frombuffer(mapping, dtype=torch.float32, offset=offset, count=values.numel())
    converted = conversion.convert_tensor(source, torch.bfloat16, torch.device("cpu"))
    assert _resident_pages(source) == 0
    assert torch.equal(converted, values.to(torch.bfloat16)) and torch.equal(source, values)
