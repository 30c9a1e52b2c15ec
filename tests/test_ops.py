"""sat.ops: the CPU linear route equals F.linear, in values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sat.ops.linear import linear


@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 64), (2, 128, 64), (300, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(shape, bias):
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(48, 64, requires_grad=True)
    b = torch.randn(48, requires_grad=True) if bias else None
    out = linear(x, weight, b)
    expected = F.linear(x, weight, b)
    assert out.shape == expected.shape == (*shape[:-1], 48)
    assert (out - expected).abs().max() < 1e-5
    grads = torch.autograd.grad(out.square().sum(), [x, weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, weight])
    for got, want in zip(grads, expected_grads):
        assert (got - want).abs().max() < 1e-3 * want.abs().max()


def test_linear_keeps_other_dtypes_on_f_linear():
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    weight = torch.randn(4, 8, dtype=torch.bfloat16)
    assert torch.equal(linear(x, weight), F.linear(x, weight))
