"""The original's lora2 functions and lenient linear layers: replace_linear_with_lora,
merge_linear_lora, HackLinear, HackColumnParallelLinear, HackRowParallelLinear."""

from __future__ import annotations

import pytest
import torch

from sat.model.finetune.lora2 import (
    HackColumnParallelLinear,
    HackLinear,
    HackRowParallelLinear,
    LoraLinear,
    merge_linear_lora,
    replace_linear_with_lora,
)
from sat.mpu import ColumnParallelLinear, RowParallelLinear


def test_replace_then_merge_keeps_the_trained_function():
    torch.manual_seed(0)
    qkv = ColumnParallelLinear(16, 48, stride=3, gather_output=False)
    lora = replace_linear_with_lora(qkv, 3, 4, 8.0, 0.0, in_size=16, out_size=None)
    assert isinstance(lora, LoraLinear) and len(lora.matrix_A) == 3
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(lora(x), qkv(x))  # B starts at zero
    for b in lora.matrix_B:
        torch.nn.init.normal_(b)
    with torch.no_grad():
        trained = lora(x)
        merged = merge_linear_lora(lora)
        assert merged is qkv
        torch.testing.assert_close(merged(x), trained, atol=1e-5, rtol=1e-5)


def test_replace_checks_the_partition():
    dense = RowParallelLinear(16, 16, input_is_parallel=True)
    assert len(replace_linear_with_lora(dense, 1, 2).matrix_A) == 1
    with pytest.raises(ValueError, match="partition=3"):
        replace_linear_with_lora(dense, 3, 2)
    with pytest.raises(ValueError, match="qlora"):
        replace_linear_with_lora(dense, 1, 2, qlora=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: HackLinear(4, 3),
        lambda: HackColumnParallelLinear(4, 3, gather_output=True),
        lambda: HackRowParallelLinear(4, 3),
    ],
)
def test_hack_layers_load_what_the_checkpoint_has(make):
    layer = make()
    bias = layer.bias.detach().clone()
    weight = torch.full((3, 4), 2.0)
    result = layer.load_state_dict({"weight": weight})  # no bias: kept, not reported
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)
    with pytest.raises(RuntimeError, match="extra"):
        layer.load_state_dict({"weight": weight, "extra": weight})
