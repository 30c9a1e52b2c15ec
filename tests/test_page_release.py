"""``sat.checkpoint.page_release``: the pages of a read checkpoint tensor leave the resident set,
its values never change, and the file stays in the page cache."""

from __future__ import annotations

import mmap
import sys
import time

import pytest
import torch
from page_cache import cached_pages, cached_tensor_pages, dropped_from_page_cache

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


def test_released_file_pages_stay_in_the_page_cache(tmp_path):
    """``MADV_DONTNEED`` on file pages: the next load finds them in memory (``MADV_PAGEOUT``
    would have evicted them and sent it to the disk)."""
    mapped = _saved(tmp_path, torch.randn(PAGES * mmap.PAGESIZE // 4))
    mapped.sum()
    before = cached_pages(tmp_path / "w.pt")
    page_release.release_pages(mapped)
    assert _resident_pages(mapped) == 0
    assert before >= PAGES and cached_pages(tmp_path / "w.pt") == before


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


def _wait_until_cached(tensor: torch.Tensor, seconds: float = 10.0) -> None:
    """Wait for every whole page of a file-mapped ``tensor`` to reach the page cache."""
    deadline = time.monotonic() + seconds
    while cached_tensor_pages(tensor) < PAGES:
        assert time.monotonic() < deadline, f"{cached_tensor_pages(tensor)} of {PAGES} pages read ahead"
        time.sleep(0.01)


def test_read_ahead_asks_for_the_next_tensors_up_to_its_lead(tmp_path):
    first, second = torch.randn(PAGES * mmap.PAGESIZE // 4), torch.randn(PAGES * mmap.PAGESIZE // 4)
    torch.save({"first": first, "second": second}, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)  # reads the pickle, not the data
    if not dropped_from_page_cache(tmp_path / "w.pt"):  # the read-around of that read too
        pytest.skip("this file system keeps the file in the page cache (tmpfs?)")

    ahead = page_release.ReadAhead([state["first"], state["second"]], lead_bytes=mmap.PAGESIZE)
    ahead.consumed()  # the lead is met by the first tensor alone
    _wait_until_cached(state["first"])  # the kernel reads asynchronously
    assert cached_tensor_pages(state["second"]) <= 1  # at most the page it shares with the first
    assert _resident_pages(state["first"]) == 0  # read into the cache, not mapped into the process
    ahead.consumed(state["first"])
    _wait_until_cached(state["second"])
    assert torch.equal(state["first"], first) and torch.equal(state["second"], second)
