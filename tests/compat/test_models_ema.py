"""The original's users' idioms for models, embeddings and the EMA optimizer, via public paths."""

from __future__ import annotations

import argparse

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
