"""LoraMixin: layout (fused QKV, GQA, cross attention), exact start, merge_lora, checkpoints
with and without the adapters, export through sat.hf, QLoRA's error without CUDA, LoRAMixin."""

from __future__ import annotations

import argparse

import pytest
import torch
from finetune_cases import FAMILIES, IDS, LAYERS, logits, tiny, train

from sat.hf import to_hf
from sat.model import AutoModel, BaseModel
from sat.model.finetune import LoraLinear, LoRAMixin, LoraMixin, freeze_all_but
from sat.mpu import ColumnParallelLinear, RowParallelLinear
from sat.training.model_io import CheckpointError, load_checkpoint, save_checkpoint

R = 4


def lora_model(family: str, **kwargs) -> tuple[torch.nn.Module, argparse.Namespace]:
    model, args = tiny(family)
    model.add_mixin("lora", LoraMixin(LAYERS, r=R, lora_alpha=8, **kwargs), reinit=True)
    return model, args


def trained_lora_model(family: str) -> tuple[torch.nn.Module, argparse.Namespace]:
    model, args = lora_model(family)
    freeze_all_but(model, ["matrix_A", "matrix_B"])
    train(model, family, steps=5)
    return model.eval(), args


def save(model: torch.nn.Module, args: argparse.Namespace, folder) -> str:
    save_checkpoint(1, model, None, None, argparse.Namespace(**{**vars(args), "save": str(folder)}))
    return str(folder)


def test_adapters_follow_the_fused_qkv_blocks_with_gqa():
    model, _ = lora_model("llama-gqa")
    attention = model.transformer.layers[0].attention
    qkv, dense = attention.query_key_value, attention.dense
    assert isinstance(qkv, LoraLinear) and isinstance(qkv.original, ColumnParallelLinear)
    assert [tuple(b.shape) for b in qkv.matrix_B] == [(32, R), (16, R), (16, R)]  # Q, then 2 of 4 heads for K, V
    assert [tuple(a.shape) for a in qkv.matrix_A] == [(R, 32)] * 3
    assert isinstance(dense.original, RowParallelLinear)
    assert [tuple(a.shape) for a in dense.matrix_A] == [(R, 32)] and [tuple(b.shape) for b in dense.matrix_B] == [
        (32, R)
    ]
    names = set(model.state_dict())
    assert {"transformer.layers.0.attention.query_key_value.original.weight"} <= names
    assert {"transformer.layers.0.attention.query_key_value.matrix_A.2"} <= names
    assert {"transformer.layers.1.attention.dense.matrix_B.0"} <= names


def test_layer_range_and_the_old_name():
    model, _ = lora_model("gpt2", layer_range=[1])
    assert not isinstance(model.transformer.layers[0].attention.query_key_value, LoraLinear)
    assert isinstance(model.transformer.layers[1].attention.query_key_value, LoraLinear)

    old, _ = tiny("gpt2")
    old.add_mixin("lora", LoRAMixin(32, LAYERS, r=R, lora_alpha=8), reinit=True)
    new, _ = lora_model("gpt2")
    assert set(old.state_dict()) == set(new.state_dict())
    with pytest.raises(ValueError, match="r >= 1"):
        LoraMixin(LAYERS)


def test_cross_attention_of_decoder_layers():
    args = BaseModel.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, hidden_dropout=0.0, attention_dropout=0.0
    )
    encoder_outputs = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))

    def run(model):
        return model(IDS, torch.arange(12).expand_as(IDS), -1, encoder_outputs=encoder_outputs)[0]

    torch.manual_seed(0)
    model = BaseModel(args, is_decoder=True)
    expected = run(model)
    model.add_mixin("lora", LoraMixin(LAYERS, r=R), reinit=True)
    cross = model.transformer.layers[0].cross_attention
    assert all(isinstance(getattr(cross, name), LoraLinear) for name in ("query", "key_value", "dense"))
    assert [tuple(b.shape) for b in cross.key_value.matrix_B] == [(32, R), (32, R)]  # K, V
    assert torch.equal(run(model), expected)
    freeze_all_but(model, ["matrix_"])
    run(model).square().mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    assert not torch.allclose(run(model), expected)
    assert cross.query.matrix_B[0].abs().sum() > 0

    torch.manual_seed(0)
    plain = BaseModel(args, is_decoder=True)
    plain.add_mixin("lora", LoraMixin(LAYERS, r=R, cross_attention=False), reinit=True)
    assert not isinstance(plain.transformer.layers[0].cross_attention.query, LoraLinear)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_equals_unmerged_then_saves_reloads_and_exports(family, tmp_path):
    base, _ = tiny(family)
    model, args = lora_model(family)
    with torch.no_grad():
        assert torch.equal(logits(model, family), logits(base, family))  # B = 0
    freeze_all_but(model, ["matrix_A", "matrix_B"])
    losses = train(model, family, steps=10)
    model.eval()
    with torch.no_grad():
        unmerged = logits(model, family)
        model.get_mixin("lora").merge_lora()
        merged = logits(model, family)
    difference = (merged - unmerged).abs().max().item()
    print(f"{family} LoRA: loss {losses[0]:.4f} -> {losses[-1]:.4f}, merge difference {difference:.2e}")
    assert difference <= 1e-5
    assert not torch.allclose(merged, logits(base, family), atol=1e-3)
    attention = model.transformer.layers[0].attention
    assert type(attention.query_key_value) is ColumnParallelLinear and type(attention.dense) is RowParallelLinear
    assert list(model.state_dict()) == list(base.state_dict())

    reloaded, _ = AutoModel.from_pretrained(save(model, args, tmp_path / "merged"))
    assert type(reloaded) is type(base)
    with torch.no_grad():
        assert torch.equal(logits(reloaded, family), merged)
        hf_logits = to_hf(model)(IDS).logits
    assert (hf_logits - merged).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_unmerged_checkpoint_saves_and_loads(family, tmp_path):
    model, args = trained_lora_model(family)
    folder = save(model, args, tmp_path)
    saved = torch.load(f"{folder}/1/mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert "transformer.layers.0.attention.query_key_value.original.weight" in saved
    assert "transformer.layers.0.attention.query_key_value.matrix_A.0" in saved
    with torch.no_grad():
        expected = logits(model, family)

    fresh, fresh_args = lora_model(family)  # built and wrapped, then loaded
    load_checkpoint(fresh, fresh_args, load_path=folder)
    skeleton, skeleton_args = AutoModel.from_pretrained(folder, build_only=True)  # on meta, then loaded
    skeleton.add_mixin("lora", LoraMixin(LAYERS, r=R, lora_alpha=8), reinit=True)
    load_checkpoint(skeleton, skeleton_args, load_path=folder)
    with torch.no_grad():
        assert torch.equal(logits(fresh.eval(), family), expected)
        assert torch.equal(logits(skeleton.eval(), family), expected)


@pytest.mark.parametrize("build_only", [False, True])
def test_base_checkpoint_loads_into_a_lora_model_in_finetune_mode(build_only, tmp_path):
    base, args = tiny("llama-gqa")
    folder = save(base, args, tmp_path)
    if build_only:
        model, args = AutoModel.from_pretrained(folder, build_only=True)
    else:
        model, args = tiny("llama-gqa", seed=1)
    model.add_mixin("lora", LoraMixin(LAYERS, r=R, lora_alpha=8), reinit=True)
    with pytest.raises(CheckpointError, match="matrix_A"):
        load_checkpoint(model, args, load_path=folder)  # inference mode: the adapters must be there
    args.mode = "finetune"
    load_checkpoint(model, args, load_path=folder)
    qkv = model.transformer.layers[0].attention.query_key_value
    assert not qkv.matrix_A[0].is_meta and qkv.matrix_A[0].abs().sum() > 0 and qkv.matrix_B[0].abs().sum() == 0
    with torch.no_grad():
        assert torch.equal(logits(model.eval(), "llama-gqa"), logits(base, "llama-gqa"))


def test_two_lora_mixins_on_one_layer_fail_naming_both():
    model, _ = lora_model("gpt2")
    before = dict(model.named_modules())
    with pytest.raises(ValueError, match=r"'lora2' \(LoraMixin\) and mixin 'lora'"):
        model.add_mixin("lora2", LoraMixin(LAYERS, r=2), reinit=True)
    assert "lora2" not in model.mixins and dict(model.named_modules()).keys() == before.keys()
    model.add_mixin("lora2", LoraMixin(LAYERS, r=2, layer_range=[]), reinit=True)  # disjoint: fine


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_qlora_without_cuda_says_what_is_missing():
    model, _ = tiny("gpt2")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"qlora=True .* needs a CUDA device .*bitsandbytes"):
        model.add_mixin("lora", LoraMixin(LAYERS, r=R, qlora=True), reinit=True)
    assert "lora" not in model.mixins
    assert model.state_dict().keys() == state.keys()  # nothing was wrapped or quantized
