"""Shared test helpers: tiny model arguments, log capture and a fixed seed."""

from __future__ import annotations

import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    vocab_size=100,
    max_sequence_length=64,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


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
