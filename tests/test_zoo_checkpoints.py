"""BertModel, RobertaModel and ViTModel checkpoints move both ways between this project and the
original library (fixtures made by tests/fixtures/original_zoo/make_zoo_fixtures.py)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from sat.model import AutoModel

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_zoo_fixtures import MODELS, outputs_of  # noqa: E402


@pytest.mark.parametrize("writer", ["written_by_original", "written_by_ours"])
@pytest.mark.parametrize("name", list(MODELS))
def test_outputs_equal_the_originals(name, writer):
    """A checkpoint the original wrote loads here, and one this project wrote loads in the
    original: in both cases the outputs equal what the original computed."""
    folder = os.path.join(FIXTURES, writer, name)
    model, _ = AutoModel.from_pretrained(folder)
    assert type(model).__name__ == MODELS[name][0]
    recorded = torch.load(os.path.join(folder, "outputs_by_original.pt"), weights_only=True)
    assert (outputs_of(name, model) - recorded).abs().max() < 1e-6
