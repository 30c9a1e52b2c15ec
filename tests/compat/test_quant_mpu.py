"""The original's users' idioms for quantization (examples/mixtral-8x7b/chat_sat.py: load, then
``quantize(model, bits)``, then generate) and for ``sat.mpu.operation``, via public paths."""

from __future__ import annotations

import argparse

import pytest
import torch
from distributed import run_workers

from sat.generation.autoregressive_sampling import filling_sequence
from sat.generation.sampling_strategies import BaseStrategy
from sat.model import AutoModel, LLaMAModel
from sat.model.mixins import CachedAutoregressiveMixin
from sat.mpu import get_model_parallel_world_size, mp_split_model
from sat.quantization.kernels import quantize
from sat.training.model_io import save_checkpoint

TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    vocab_size=96,
    max_sequence_length=64,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    num_multi_query_heads=2,
    use_bias=False,
)


@pytest.fixture
def checkpoint(tmp_path) -> str:
    torch.manual_seed(0)
    args = LLaMAModel.get_args(**TINY, save=str(tmp_path / "llama"))
    save_checkpoint(1, LLaMAModel(args), None, None, args)
    return args.save


def _load(path: str) -> torch.nn.Module:
    model, _ = AutoModel.from_pretrained(
        path, args=argparse.Namespace(mode="inference", skip_init=True, device="cpu", fp16=False, bf16=False)
    )
    return model.eval()


def _greedy(model: torch.nn.Module) -> list[int]:
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    seq = torch.tensor([5, 17, 3, 42] + [-1] * 6)
    with torch.no_grad():
        tokens, _ = filling_sequence(model, seq, batch_size=1, strategy=BaseStrategy(top_k=1))
    return tokens[0].tolist()


@pytest.mark.parametrize("bits", [8, 4])
def test_load_quantize_generate(checkpoint, bits):
    reference = _greedy(_load(checkpoint))
    model = quantize(_load(checkpoint), bits)
    qkv = model.transformer.layers[0].attention.query_key_value
    assert qkv.weight.dtype == torch.int8 and qkv.weight.shape == (64, 32 * bits // 8)
    tokens = _greedy(model)
    assert len(tokens) == 10 and tokens[:4] == [5, 17, 3, 42]
    if bits == 8:  # 8 bits keep a tiny model's greedy choices
        assert tokens == reference


def _split_worker(rank: int, world: int, path: str) -> dict:
    model = _load(path)
    with torch.no_grad():
        full = model(torch.arange(8)[None], torch.arange(8)[None], -1)[0]
    mp_split_model(model, world)
    with torch.no_grad():
        split = model(torch.arange(8)[None], torch.arange(8)[None], -1)[0]
    return {"mp": get_model_parallel_world_size(), "difference": (split - full).abs().max().item()}


@pytest.mark.multiprocess
def test_mp_split_model_after_loading(checkpoint):
    for result in run_workers(_split_worker, 2, checkpoint):
        assert result["mp"] == 2 and result["difference"] < 1e-5
