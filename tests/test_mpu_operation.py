"""sat.mpu.operation: splitting and merging a built model on 2 CPU processes over gloo, and the
checkpoint-directory variants."""

from __future__ import annotations

import pytest
import torch
from distributed import run_workers

from sat import mpu
from sat.model import AutoModel, BaseModel
from sat.mpu.operation import (
    mp_merge_checkpoint,
    mp_merge_model_rank0,
    mp_merge_model_send,
    mp_split_checkpoint,
    mp_split_model,
    mp_split_model_rank0,
    mp_split_model_receive,
)
from sat.training.model_io import save_checkpoint

IDS = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(10).expand(2, 10)
TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    vocab_size=96,
    max_sequence_length=32,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    num_multi_query_heads=2,  # a GQA-strided query_key_value
    is_gated_mlp=True,
)


def _tiny(seed: int, **overrides) -> BaseModel:
    torch.manual_seed(seed)
    return BaseModel(BaseModel.get_args(**{**TINY, **overrides})).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, POSITIONS, -1)[0]


def _split_in_place_worker(rank: int, world: int) -> dict:
    model = _tiny(0)  # every rank builds the same full model
    full_logits = _logits(model)
    mp_split_model(model, world)
    return {
        "mp": mpu.get_model_parallel_world_size(),
        "qkv": tuple(model.transformer.layers[0].attention.query_key_value.weight.shape),
        "heads": model.transformer.layers[0].attention.num_attention_heads_per_partition,
        "full logits": full_logits,
        "split logits": _logits(model),
    }


@pytest.mark.multiprocess
def test_mp_split_model_keeps_each_ranks_shard_and_the_logits():
    for result in run_workers(_split_in_place_worker, 2):
        assert result["mp"] == 2 and result["heads"] == 2
        assert result["qkv"] == (32, 32)  # (4 + 2 * 2) heads * 8 / 2 ranks
        assert (result["split logits"] - result["full logits"]).abs().max() < 1e-5


def _rank0_worker(rank: int, world: int) -> dict:
    # The full models exist at model-parallel size 1, before the groups of size 2.
    model_full = _tiny(0) if rank == 0 else None
    merged = _tiny(1) if rank == 0 else None
    mpu.initialize_model_parallel(world)
    model = _tiny(2 + rank, model_parallel_size=world)  # other weights, to be overwritten
    if rank == 0:
        mp_split_model_rank0(model, model_full)
    else:
        mp_split_model_receive(model)
    result = {"split logits": _logits(model), "shard": model.state_dict()}
    if rank == 0:
        mp_merge_model_rank0(model, merged)
        result["merged"] = merged.state_dict()
    else:
        mp_merge_model_send(model)
    return result


@pytest.mark.multiprocess
def test_split_from_rank0_equals_mp2_build_and_merges_back():
    full = _tiny(0)
    logits = _logits(full)
    results = run_workers(_rank0_worker, 2)
    for rank, result in enumerate(results):
        assert (result["split logits"] - logits).abs().max() < 1e-5, rank
        # Each shard is the one a model built at MP2 from the same weights holds.
        qkv = result["shard"]["transformer.layers.0.attention.query_key_value.weight"]
        heads, kv = 4 // 2, 2 // 2
        q, k, v = full.transformer.layers[0].attention.query_key_value.weight.split([32, 16, 16])
        expected = torch.cat([t.chunk(2)[rank] for t in (q, k, v)])
        assert qkv.shape == ((heads + 2 * kv) * 8, 32) and torch.equal(qkv, expected)
    merged = results[0]["merged"]
    assert merged.keys() == full.state_dict().keys()
    assert all(torch.equal(merged[key], value) for key, value in full.state_dict().items())


def test_checkpoint_split_then_merge_round_trips(tmp_path):
    overrides = {**TINY, "save": str(tmp_path / "mp1")}
    torch.manual_seed(0)
    args = BaseModel.get_args(**overrides)
    model = BaseModel(args)
    save_checkpoint(1, model, None, None, args)
    split = mp_split_checkpoint(args.save, 2)
    assert split == f"{args.save}-mp2"
    assert sorted(p.name for p in (tmp_path / "mp1-mp2" / "1").iterdir()) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]
    merged = mp_merge_checkpoint(split, target=str(tmp_path / "merged"))
    loaded, loaded_args = AutoModel.from_pretrained(merged)
    assert loaded_args.model_parallel_size == 1
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())
