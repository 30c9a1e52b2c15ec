"""``gc_paused`` (around ``from_pretrained``): no automatic collection inside the block, and at its
end one young collection, not the full one that was due, however many objects the block made;
cycles made inside are still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sat.helpers import gc_paused


class _Node:
    def __init__(self) -> None:
        self.itself = self  # a cycle: only the cyclic collector frees it


@contextmanager
def _collections() -> Iterator[list[int]]:
    """The generation of every collection that starts inside the block."""
    generations: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield generations
    finally:
        gc.callbacks.remove(record)


@contextmanager
def _full_collection_due() -> Iterator[None]:
    """A collector whose next automatic collection is a full one, as after a program's imports:
    the oldest generation's threshold passed, with more objects promoted into it since the last
    full collection than a quarter of those it held then."""
    thresholds = gc.get_threshold()
    gc.collect()
    promoted = [[] for _ in range(len(gc.get_objects()))]
    gc.collect(1)  # into the oldest generation
    gc.set_threshold(thresholds[0], thresholds[1], 0)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        del promoted


def _allocate_past_every_threshold() -> list[list]:
    """Enough new container objects to trigger automatic collections many times over."""
    return [[] for _ in range(20 * gc.get_threshold()[0])]


def test_the_block_ends_with_one_young_collection_that_frees_its_cycles():
    assert gc.isenabled()
    with _full_collection_due(), _collections() as generations:
        with gc_paused():
            assert not gc.isenabled()
            kept = _allocate_past_every_threshold()
            cycle = weakref.ref(_Node())
            assert generations == []
        assert gc.isenabled()
    assert generations == [0]
    assert cycle() is None
    assert len(kept) == 20 * gc.get_threshold()[0]


def test_a_collector_that_was_off_stays_off_and_does_not_run():
    gc.disable()
    try:
        with _collections() as generations:
            with gc_paused():
                _allocate_past_every_threshold()
        assert not gc.isenabled() and generations == []
    finally:
        gc.enable()
