"""Shared test helpers: tiny model arguments, log capture and a fixed seed."""

from __future__ import annotations

import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# pytest-xdist workers (`make test`: -n 2) share the cores: each takes its share of torch's
# threads, and so do the processes it starts (OMP_NUM_THREADS), or their OpenMP threads spin
# against each other and the suite runs slower than in one process.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    vocab_size=100,
    max_sequence_length=64,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (`make test`: -n 2 --dist loadgroup) the tests that start process groups
    # or launchers run one after another on one worker: each already uses both cores, and running
    # two at once only makes them compete (their ports and directories are per test already).
    # The marks go on before pytest-xdist's own hook reads them (this wrapper runs around it).
    has_xdist = config.pluginmanager.hasplugin("xdist")
    multiprocess = pytest.mark.xdist_group("multiprocess") if has_xdist else None
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if multiprocess is not None and item.get_closest_marker("multiprocess") is not None:
            item.add_marker(multiprocess)
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
    result = yield
    if has_xdist and hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        _apply_xdist_groups(items)
    return result


def _apply_xdist_groups(items):
    """pytest-xdist 3.8 tells its controller an item's group by appending ``@group`` to the node id
    through ``item._nodeid``, which pytest 9.2 no longer reads (it keeps a structured ``item._id``):
    the groups are silently lost (pytest-dev/pytest-xdist#1386). Do the same through ``_id`` where
    the suffix is missing; a no-op once xdist sets it itself. tests/test_xdist_groups.py checks it."""
    for item in items:
        names = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_args():
    """A factory of BaseModel arguments for a 2-layer, hidden-32 model; keywords override."""
    from sat.model import BaseModel

    def make(**overrides):
        return BaseModel.get_args(**{**TINY, **overrides})

    return make


@pytest.fixture
def tokens():
    """``(input_ids [2, 10], position_ids [2, 10])``."""
    input_ids = torch.randint(0, 100, (2, 10))
    position_ids = torch.arange(10).unsqueeze(0).expand(2, 10)
    return input_ids, position_ids


@pytest.fixture
def sat_log(caplog):
    """caplog wired to the ``sat`` logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("sat")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="sat")
    yield caplog
    logger.removeHandler(caplog.handler)
