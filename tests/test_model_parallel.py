"""Tensor model parallelism on 2 (and 4) CPU processes over gloo."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from distributed import assert_grads_equal, gathered_grads, run_workers

from sat import mpu
from sat.model import AutoModel, BaseModel
from sat.model.official import (
    GLM130B,
    BertModel,
    ChatGLM2Model,
    GPT2Model,
    GPTJModel,
    GPTNeoModel,
    LLaMAModel,
    MixtralModel,
    T5Model,
)
from sat.mpu.partition import split_strided
from sat.tools.reshard import main as reshard_main
from sat.training.model_io import save_checkpoint

pytestmark = pytest.mark.multiprocess

IDS = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(10).expand(2, 10)
ENC_PADDING = torch.ones(2, 1, 1, 10)
ENC_PADDING[1, ..., 7:] = 0  # T5's second source is padded


def _logits(model: torch.nn.Module) -> torch.Tensor:
    """The model's vocabulary logits on IDS (T5: a padded source IDS, the decoder's input its reverse)."""
    if isinstance(model, T5Model):
        return model(IDS, IDS.flip(1), enc_attention_mask=ENC_PADDING)[1]
    return model(IDS, POSITIONS, -1)[0]


def _layers_worker(rank: int, world: int) -> dict:
    mpu.initialize_model_parallel(world)
    diffs = {}
    torch.manual_seed(0)
    column = mpu.ColumnParallelLinear(8, 12, stride=3, gather_output=True)
    torch.manual_seed(0)
    full = torch.nn.init.normal_(torch.empty(12, 8), std=0.02)
    diffs["column shard"] = (column.weight - split_strided(full, world, 3)[rank]).abs().max().item()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    torch.manual_seed(0)
    plain = mpu.ColumnParallelLinear(8, 12, gather_output=True)
    out = plain(x)
    diffs["column forward"] = (out - F.linear(x, full, torch.zeros(12))).abs().max().item()
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    diffs["column input grad"] = (grad - torch.autograd.grad(F.linear(x, full).square().sum(), x)[0]).abs().max().item()

    torch.manual_seed(0)
    row = mpu.RowParallelLinear(12, 8)
    torch.manual_seed(0)
    row_full = torch.nn.init.normal_(torch.empty(8, 12), std=0.02)
    y = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    diffs["row forward"] = (row(y) - F.linear(y, row_full)).abs().max().item()

    torch.manual_seed(0)
    embedding = mpu.VocabParallelEmbedding(16, 4)
    torch.manual_seed(0)
    table = torch.nn.init.normal_(torch.empty(16, 4), std=0.02)
    ids = torch.tensor([[0, 7, 8, 15]])
    diffs["embedding"] = (embedding(ids) - table[ids]).abs().max().item()

    logits = torch.randn(6, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    target = torch.tensor([0, 5, 8, 15, 9, 1])
    shard = logits[:, rank * 16 // world : (rank + 1) * 16 // world]
    loss = mpu.vocab_parallel_cross_entropy(shard, target)
    expected = F.cross_entropy(logits, target, reduction="none")
    diffs["cross entropy"] = (loss - expected).abs().max().item()
    grad = torch.autograd.grad(loss.sum(), logits)[0]
    expected_grad = torch.autograd.grad(expected.sum(), logits)[0]
    own = slice(rank * 16 // world, (rank + 1) * 16 // world)
    diffs["cross entropy grad"] = (grad[:, own] - expected_grad[:, own]).abs().max().item()

    data = {"tokens": torch.arange(6).view(2, 3) * (rank + 1)}  # only rank 0's values count
    diffs["broadcast"] = float(
        (mpu.broadcast_data(["tokens"], data, torch.int64)["tokens"] - torch.arange(6).view(2, 3)).abs().max()
    )
    return diffs


def test_parallel_layers_equal_full_layers():
    for diffs in run_workers(_layers_worker, 2):
        for name, value in diffs.items():
            assert value < 1e-6, (name, value)


def _model_worker(rank: int, world: int, folder: str) -> dict:
    model, args = AutoModel.from_pretrained(folder, overwrite_args={"model_parallel_size": world})
    assert mpu.get_model_parallel_world_size() == world and args.model_parallel_size == world
    logits = _logits(model)
    logits.square().mean().backward()
    return {"logits": logits.detach(), "grads": gathered_grads(model)}


def _tiny(model_cls, **overrides):
    args = model_cls.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=96,
        max_sequence_length=32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **overrides,
    )
    torch.manual_seed(0)
    return model_cls(args), args


@pytest.mark.parametrize(
    "model_cls, overrides",
    [
        (GPT2Model, {}),
        (BaseModel, dict(num_multi_query_heads=2, is_rotary_emb=True, is_gated_mlp=True)),
        (LLaMAModel, dict(num_multi_query_heads=2, use_bias=False)),
        (BertModel, dict(layernorm_order="post")),  # a replicated dense + norm before the vocabulary
        (T5Model, dict(relative_attention_num_buckets=8)),  # v1.0: tied, scaled head
        (T5Model, dict(gated_gelu_mlp=True, no_share_embeddings=True, dec_num_layers=3)),  # v1.1: own lm_head
        (GPTJModel, dict(rotary_dim=4)),  # parallel residual, partial interleaved rotary, biased head
        (GPTNeoModel, dict(attention_types="global,local", window_size="4")),  # 10 tokens: windowed
        (GLM130B, dict(inner_hidden_size=40)),  # per-head fused qkv, GEGLU halves, DeepNorm, tied head
        (ChatGLM2Model, dict(num_multi_query_heads=2)),  # the 'mlp' mixin's own gate projections
        (ChatGLM2Model, dict(num_multi_query_heads=2, is_gated_mlp=True)),
        (MixtralModel, dict(num_multi_query_heads=2, num_experts=4, use_bias=False)),  # experts and router
    ],
    ids=[
        "gpt2",
        "gqa-rotary-gated",
        "llama-gqa",
        "bert",
        "t5",
        "t5-v1.1",
        "gptj",
        "gpt_neo",
        "glm130b",
        "chatglm2-mixin-mlp",
        "chatglm2-gated",
        "mixtral",
    ],  # fmt: skip
)
def test_mp2_logits_and_gradients_equal_mp1(tmp_path, model_cls, overrides):
    model, args = _tiny(model_cls, **overrides)
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    logits = _logits(model)
    logits.square().mean().backward()
    results = run_workers(_model_worker, 2, str(tmp_path))
    for result in results:
        assert (result["logits"] - logits).abs().max() < 1e-5
        assert_grads_equal(result["grads"], model)


def _reshard_worker(rank: int, world: int, source: str, target: str) -> None:
    model, args = AutoModel.from_pretrained(source, overwrite_args={"model_parallel_size": world})
    args.save = target
    save_checkpoint(7, model, None, None, args)


def _files(folder: str, iteration: str) -> list[str]:
    """The model files of an iteration directory (without its manifest.json)."""
    return sorted(name for name in os.listdir(os.path.join(folder, iteration)) if name != "manifest.json")


def test_resharding_round_trips_exactly(tmp_path):
    model, args = _tiny(GPT2Model)
    args.save = str(tmp_path / "mp1")
    save_checkpoint(3, model, None, None, args)
    run_workers(_reshard_worker, 2, str(tmp_path / "mp1"), str(tmp_path / "mp2"))
    assert _files(str(tmp_path / "mp2"), "7") == ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]

    reshard_main([str(tmp_path / "mp2"), str(tmp_path / "back"), "--model-parallel-size", "1"])
    merged, merged_args = AutoModel.from_pretrained(str(tmp_path / "back"))
    assert merged_args.model_parallel_size == 1
    for key, value in model.state_dict().items():
        assert torch.equal(merged.state_dict()[key], value), key

    reshard_main([str(tmp_path / "mp1"), str(tmp_path / "offline2"), "--model-parallel-size", "2"])
    for rank in range(2):
        name = f"mp_rank_{rank:02d}_model_states.pt"
        online = torch.load(tmp_path / "mp2" / "7" / name, weights_only=True)["module"]
        offline = torch.load(tmp_path / "offline2" / "3" / name, weights_only=True)["module"]
        assert all(torch.equal(online[k], offline[k]) for k in online)


@pytest.mark.slow
def test_resharding_two_to_four(tmp_path):
    model, args = _tiny(GPT2Model)
    args.save = str(tmp_path / "mp1")
    save_checkpoint(1, model, None, None, args)
    reshard_main([str(tmp_path / "mp1"), str(tmp_path / "mp2"), "--model-parallel-size", "2"])
    run_workers(_reshard_worker, 4, str(tmp_path / "mp2"), str(tmp_path / "mp4"))
    assert len(_files(str(tmp_path / "mp4"), "7")) == 4
    reshard_main([str(tmp_path / "mp4"), str(tmp_path / "back"), "--model-parallel-size", "1"])
    merged, _ = AutoModel.from_pretrained(str(tmp_path / "back"))
    for key, value in model.state_dict().items():
        assert torch.equal(merged.state_dict()[key], value), key


TRAIN_STEPS = 5


def _train_steps(model: torch.nn.Module) -> list[float]:
    """A few AdamW steps of next-token loss on ``IDS``; the loss reads the vocabulary shards
    (``parallel_output``) through the vocab-parallel cross entropy."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(TRAIN_STEPS):
        logits = model(IDS, POSITIONS, -1)[0]  # [b, s, vocab / world]
        loss = mpu.vocab_parallel_cross_entropy(logits[:, :-1].contiguous(), IDS[:, 1:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _train_worker(rank: int, world: int, source: str, target: str) -> list[float]:
    overwrite = {"model_parallel_size": world, "parallel_output": True, "hidden_dropout": 0.0, "attention_dropout": 0.0}
    model, args = AutoModel.from_pretrained(source, overwrite_args=overwrite)
    model.train()
    losses = _train_steps(model)
    args.save = target
    save_checkpoint(TRAIN_STEPS, model, None, None, args)
    return losses


def test_hf_to_sat_mp2_training_merge_and_back_to_hf(tmp_path):
    """The story of the seeds: a transformers GPT-2 becomes a sat model, trains at model
    parallel 2 on 2 processes, is merged offline and exported back to transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sat.hf import from_hf, to_hf

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(config)
    model, args = from_hf(hf, hidden_dropout=0.0, attention_dropout=0.0)
    args.save = str(tmp_path / "sat")
    save_checkpoint(1, model, None, None, args)

    mp2_losses = run_workers(_train_worker, 2, str(tmp_path / "sat"), str(tmp_path / "mp2"))
    assert mp2_losses[0] == mp2_losses[1]  # both ranks see the whole loss
    model.train()
    model.transformer.parallel_output = True  # the same loss path as the workers, at size 1
    mp1_losses = _train_steps(model)
    assert max(abs(a - b) for a, b in zip(mp2_losses[0], mp1_losses)) < 1e-5
    assert mp2_losses[0][-1] < mp2_losses[0][0]

    reshard_main([str(tmp_path / "mp2"), str(tmp_path / "merged"), "--model-parallel-size", "1"])
    merged, _ = AutoModel.from_pretrained(str(tmp_path / "merged"))
    exported = to_hf(merged).eval()
    with torch.no_grad():
        sat_logits = merged(IDS, POSITIONS, -1)[0]
        hf_logits = exported(IDS).logits
        before = hf(IDS).logits
    assert (sat_logits - hf_logits).abs().max() < 1e-5
    assert (hf_logits - before).abs().max() > 1e-2  # the export carries the trained weights


def _split_merge_in_one_job_worker(rank: int, world: int, mp1: str) -> dict:
    split, split_args = AutoModel.from_pretrained(mp1, overwrite_args={"model_parallel_size": world})
    split_logits = _logits(split)
    groups_after_split = mpu.get_model_parallel_world_size()
    split_args.save = os.path.join(os.path.dirname(mp1), "mp2")
    save_checkpoint(2, split, None, None, split_args)
    # The job's groups are MP2 now; merging inside it re-creates them at MP1, as the original did.
    merged, merged_args = AutoModel.from_pretrained(split_args.save, overwrite_args={"model_parallel_size": 1})
    return {
        "groups": (groups_after_split, mpu.get_model_parallel_world_size(), mpu.get_data_parallel_world_size()),
        "sizes": (split_args.model_parallel_size, merged_args.model_parallel_size),
        "split logits": split_logits,
        "merged logits": _logits(merged),
        "merged state": merged.state_dict(),
    }


def test_from_pretrained_splits_and_merges_inside_one_job(tmp_path):
    model, args = _tiny(GPT2Model)
    args.save = str(tmp_path / "mp1")
    save_checkpoint(1, model, None, None, args)
    logits = _logits(model)
    for result in run_workers(_split_merge_in_one_job_worker, 2, args.save):
        assert result["groups"] == (2, 1, 2) and result["sizes"] == (2, 1)
        assert (result["split logits"] - logits).abs().max() < 1e-5
        assert torch.equal(result["merged logits"], logits)
        assert all(torch.equal(result["merged state"][key], value) for key, value in model.state_dict().items())
