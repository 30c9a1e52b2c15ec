"""``VocabParallelEmbedding``: ids outside the vocabulary (GLM's ``-1`` padding) embed to zero
rows at every model-parallel size, as in the original."""

from __future__ import annotations

import pytest
import torch
from distributed import run_workers

from sat import mpu

IDS = torch.tensor([[0, 7, -1, 8, 15, 16, -5]])  # -1, 16 and -5 lie outside a vocabulary of 16
INSIDE = (IDS >= 0) & (IDS < 16)


def _table() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.nn.init.normal_(torch.empty(16, 4), std=0.02)  # the draw the layer makes


def _expected() -> torch.Tensor:
    return torch.where(INSIDE.unsqueeze(-1), _table()[IDS.clamp(0, 15)], 0.0)  # [1, 7, 4]


def test_ids_outside_the_vocabulary_embed_to_zeros_at_model_parallel_size_1():
    torch.manual_seed(0)
    embedding = mpu.VocabParallelEmbedding(16, 4)
    out = embedding(IDS)
    assert out.shape == (1, 7, 4)
    assert torch.equal(out, _expected())
    assert torch.count_nonzero(out[~INSIDE]) == 0
    out.sum().backward()
    assert torch.equal(embedding.weight.grad.sum(dim=1), torch.bincount(IDS[INSIDE], minlength=16).float() * 4)


def _mp2_worker(rank: int, world: int) -> torch.Tensor:
    mpu.initialize_model_parallel(world)
    torch.manual_seed(0)
    return mpu.VocabParallelEmbedding(16, 4)(IDS)


@pytest.mark.multiprocess
def test_ids_outside_the_vocabulary_embed_to_zeros_at_model_parallel_size_2():
    for out in run_workers(_mp2_worker, 2):
        assert torch.allclose(out, _expected(), atol=1e-7, rtol=0)
        assert torch.count_nonzero(out[~INSIDE]) == 0
