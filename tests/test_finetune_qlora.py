"""QLoRA on CUDA with bitsandbytes (skipped where either is missing: neither is in the CI install)."""

from __future__ import annotations

import pytest
import torch
from finetune_cases import IDS, LAYERS, tiny

from sat.model.finetune import LoraMixin, freeze_all_but
from sat.model.finetune.qlora import NF4ColumnParallelLinear
from sat.mpu import ColumnParallelLinear

pytestmark = pytest.mark.gpu


def test_qlora_trains_and_merges_back_into_plain_layers():
    pytest.importorskip("bitsandbytes")
    model, _ = tiny("gpt2")
    model = model.cuda()
    ids, positions = IDS.cuda(), torch.arange(IDS.shape[1]).expand_as(IDS).cuda()
    with torch.no_grad():
        expected = model(ids, positions, -1)[0]
    keys = set(model.state_dict())
    model.add_mixin("lora", LoraMixin(LAYERS, r=4, lora_alpha=8, qlora=True), reinit=True)
    qkv = model.transformer.layers[0].attention.query_key_value
    assert isinstance(qkv.original, NF4ColumnParallelLinear)
    with torch.no_grad():
        assert (model(ids, positions, -1)[0] - expected).abs().max() < 0.2 * expected.abs().max()  # 4-bit error

    freeze_all_but(model, ["matrix_"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(ids, positions, -1)[0].logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        unmerged = model(ids, positions, -1)[0]
        model.get_mixin("lora").merge_lora()
        merged = model(ids, positions, -1)[0]
    assert type(model.transformer.layers[0].attention.query_key_value) is ColumnParallelLinear
    assert set(model.state_dict()) == keys
    assert (merged - unmerged).abs().max() < 1e-2  # NF4 matmul vs the dequantized weight
