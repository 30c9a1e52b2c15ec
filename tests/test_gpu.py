"""The backbone on CUDA (skipped where there is none)."""

from __future__ import annotations

import pytest
import torch

from sat.model import BaseModel

pytestmark = pytest.mark.gpu


def test_cuda_forward_matches_cpu_and_sdpa_matches_eager(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(num_multi_query_heads=2, is_rotary_emb=True)).eval()
    expected = model(ids, pos, -1)[0]
    cuda = model.cuda()
    got = cuda(ids.cuda(), pos.cuda(), -1)[0].cpu()
    assert (got - expected).abs().max() < 1e-4
    half = cuda.to(torch.bfloat16)
    sdpa = half(ids.cuda(), pos.cuda(), -1)[0].float()
    eager = half(ids.cuda(), pos.cuda(), torch.ones(10, 10, device="cuda").tril())[0].float()
    torch.testing.assert_close(sdpa, eager, atol=3e-2, rtol=3e-2)  # bf16 kernels round differently
