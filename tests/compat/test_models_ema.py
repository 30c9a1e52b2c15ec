"""The original's users' idioms for models, embeddings and the EMA optimizer, via public paths."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from sat.model import BaseModel

TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    vocab_size=100,
    max_sequence_length=64,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    inner_hidden_size=None,
    hidden_size_per_attention_head=None,
    layernorm_order="pre",
    model_parallel_size=1,
    fp16=False,
    bf16=False,
    device="cpu",
)


def _args(**overrides) -> argparse.Namespace:
    return argparse.Namespace(**{**TINY, **overrides})


def test_conversion_script_assigns_data_into_a_skip_init_model():
    torch.manual_seed(0)
    source = BaseModel(_args()).eval()
    model = BaseModel(_args(skip_init=True)).eval()
    sources = dict(source.named_parameters())
    for name, param in model.named_parameters():
        param.data = sources[name].data
    ids = torch.randint(0, 100, (1, 6))
    pos = torch.arange(6).unsqueeze(0)
    assert torch.equal(model(ids, pos, None)[0], source(ids, pos, None)[0])


def test_minus_one_padding_embeds_to_zeros():
    from sat.mpu import VocabParallelEmbedding

    embedding = VocabParallelEmbedding(100, 8)
    tokens = torch.tensor([[5, 6, -1, -1]])  # GLM finetunes pad with -1
    out = embedding(tokens)
    assert out.shape == (1, 4, 8) and torch.count_nonzero(out[0, 2:]) == 0
    assert torch.equal(out[0, :2], embedding.weight[[5, 6]])


def test_fused_ema_adam_trains_and_swaps_in_its_average():
    from sat.ops import FusedEmaAdam

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = FusedEmaAdam(model.parameters(), lr=0.1, ema_decay=0.9)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = model.weight.detach().clone()
    optimizer.store(model.parameters())
    optimizer.copy_to()  # evaluate the EMA model
    assert torch.equal(model.weight, optimizer.state[model.weight]["shadow"])
    optimizer.restore(model.parameters())
    assert torch.equal(model.weight, trained)


def _trained_with_ema(steps: int = 3):
    from sat.ops import FusedEmaAdam

    torch.manual_seed(0)
    model = BaseModel(_args())
    optimizer = FusedEmaAdam(model.parameters(), lr=0.05, ema_decay=0.5, use_num_upates=False)
    ids = torch.randint(0, 100, (2, 8))
    pos = torch.arange(8).expand(2, 8)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(ids, pos, None)[0]  # [2, 8, vocab]
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
        optimizer.step()
    return model, optimizer


def test_ema_helpers_swap_the_average_in_and_restore_exactly():
    from sat.training.model_io import restore_ema_parameters_back, update_ema_parameters_to_model

    model, optimizer = _trained_with_ema()
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    update_ema_parameters_to_model(optimizer)
    for name, p in model.named_parameters():
        assert torch.equal(p, optimizer.state[p]["shadow"]), name
    assert not torch.equal(model.transformer.word_embeddings.weight, trained["transformer.word_embeddings.weight"])
    restore_ema_parameters_back(optimizer)
    for name, p in model.named_parameters():
        assert torch.equal(p, trained[name]), name


def test_save_checkpoint_writes_an_ema_checkpoint_from_pretrained_loads(tmp_path):
    from sat.model import AutoModel
    from sat.training.model_io import save_checkpoint

    model, optimizer = _trained_with_ema()
    shadows = {name: optimizer.state[p]["shadow"].clone() for name, p in model.named_parameters()}
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = _args(save=str(tmp_path))
    save_checkpoint(3, model, optimizer, None, args)
    assert sorted(os.listdir(tmp_path)) == ["3", "3-ema", "latest", "model_config.json"]
    assert (tmp_path / "latest").read_text() == "3"
    assert sorted(os.listdir(tmp_path / "3-ema")) == ["manifest.json", "mp_rank_00_model_states.pt"]
    for name, p in model.named_parameters():  # the model keeps training from its own weights
        assert torch.equal(p, trained[name]), name
    ema_model, _ = AutoModel.from_pretrained(str(tmp_path), specific_iteration="3-ema")
    for name, p in ema_model.named_parameters():
        assert torch.equal(p, shadows[name]), name
    latest_model, _ = AutoModel.from_pretrained(str(tmp_path))
    for name, p in latest_model.named_parameters():
        assert torch.equal(p, trained[name]), name
    with pytest.raises(ValueError, match="'<iteration>-ema'"):
        AutoModel.from_pretrained(str(tmp_path), specific_iteration="3-average")


def test_ema_helpers_name_a_wrong_optimizer():
    from sat.training.model_io import update_ema_parameters_to_model

    with pytest.raises(ValueError, match="Adam keeps no EMA weights: the optimizer must be sat.ops.FusedEmaAdam"):
        update_ema_parameters_to_model(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()))
