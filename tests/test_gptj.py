"""GPTJModel and the gptj family of sat.hf: parity with transformers' GPT-J, generation,
finetuning, and the backbone options it is built from (parallel order, partial interleaved
rotary, MLP-only biases)."""

from __future__ import annotations

import pytest
import torch
from finetune_cases import VOCAB, tiny_model
from lm_checks import (
    IDS,
    check_batched_prompts,
    check_finetuning_reduces_the_loss,
    check_greedy_generation,
    hf_logits,
    sat_logits,
)
from model_checks import check_hf_round_trip, check_left_padded_batch, check_sat_model, check_unmatched_keys
from safetensors import safe_open
from transformers import GPTJConfig, GPTJForCausalLM
from transformers import GPTJModel as HFGPTJModel

from sat.hf import from_hf, to_hf
from sat.model import AutoModel
from sat.model.official import GPTJModel

EOS = 1


def hf_config(**overrides) -> GPTJConfig:
    values = dict(
        n_layer=2, n_embd=32, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=EOS
    )
    return GPTJConfig(**{**values, **overrides})


def random_hf(model_cls=GPTJForCausalLM, seed: int = 0, **overrides):
    """A tiny GPT-J with every parameter random (biases and norms too, which HF starts at 0 / 1),
    its matrices sharpened so that greedy continuations vary."""
    torch.manual_seed(seed)
    hf = model_cls(hf_config(**overrides)).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.mul_(4.0 if param.dim() > 1 else 1.0).add_(torch.randn_like(param), alpha=0.1)
    return hf


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # rotary on 4 of 8 channels per head
        {"rotary_dim": 8, "n_inner": 48},  # the whole head, an MLP width other than 4h
        {"tie_word_embeddings": True},
    ],
)
def test_parity_with_transformers(tmp_path, overrides):
    difference = check_hf_round_trip(random_hf(**overrides), sat_logits, hf_logits, tmp_path, atol=1e-5)
    assert difference < 1e-5


def test_translated_configuration_is_gptj():
    model, args = from_hf(random_hf())
    t = model.transformer
    assert (t.layernorm_order, t.rotary_dim, t.rotary_interleaved, t.is_rotary_emb) == ("parallel", 4, True, True)
    assert (args.bos_token_id, args.eos_token_id, args.pad_token_id) == (0, EOS, -1)
    layer = t.layers[0]
    assert not hasattr(layer, "post_attention_layernorm")  # one norm per layer
    assert layer.attention.query_key_value.bias is None and layer.attention.dense.bias is None
    assert layer.mlp.dense_h_to_4h.bias.shape == (128,) and layer.mlp.dense_4h_to_h.bias.shape == (32,)
    assert model.get_mixin("lm").lm_head.bias.shape == (VOCAB,)
    assert t.position_embeddings.inv_freq.shape == (2,)  # 4 rotated channels: 2 frequencies
    back = to_hf(model).config
    assert (back.rotary_dim, back.bos_token_id, back.eos_token_id, back.pad_token_id) == (4, 0, EOS, None)


def test_tied_directory_without_lm_head_loads_through_automodel(tmp_path):
    hf = random_hf(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "lm_head.bias" in f.keys()
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    assert isinstance(model, GPTJModel)
    head = model.get_mixin("lm").lm_head.weight
    embedding = model.transformer.word_embeddings.weight
    assert torch.equal(head, embedding) and head.data_ptr() != embedding.data_ptr()  # equal, not aliased
    with torch.no_grad():
        assert (sat_logits(model) - hf_logits(hf)).abs().max() < 1e-5


def test_headless_gptj(tmp_path):
    base = random_hf(HFGPTJModel)
    model, args = from_hf(base)
    assert args.headless and "lm" not in model.mixins
    with torch.no_grad():
        hidden = base(IDS).last_hidden_state
        assert (sat_logits(model) - hidden).abs().max() < 1e-5  # no head: hidden states
        back = to_hf(model)
        assert type(back) is HFGPTJModel and (back(IDS).last_hidden_state - hidden).abs().max() < 1e-5


def test_left_padded_batch_matches_transformers():
    assert check_left_padded_batch(random_hf(), IDS) < 1e-5


def test_cached_greedy_equals_uncached_and_transformers():
    hf = random_hf()
    model, _ = from_hf(hf)
    tokens = check_greedy_generation(hf, model, torch.tensor([3, 17, 42, 95, 7, 61]), 32)
    assert tokens.shape == (1, 38)
    check_batched_prompts(model, [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11]], 12)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = GPTJModel.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=VOCAB,
        rotary_dim=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTJModel(args)
    assert list(model.mixins) == ["lm"] and model.transformer.layernorm_order == "parallel"
    check_sat_model(model, args, sat_logits, tmp_path)
    loaded, _ = AutoModel.from_pretrained(args.save)
    assert (loaded.transformer.rotary_dim, loaded.transformer.use_mlp_bias) == (4, True)


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_reduces_the_loss(name):
    model, _ = tiny_model(GPTJModel, dict(rotary_dim=4))
    losses = check_finetuning_reduces_the_loss(model, name, family="gptj")
    print(f"gptj {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"activation_function": "relu"}, "activation 'relu' is not supported"),
        ({"rotary_dim": 5}, "rotary_dim=5 is not supported"),
        ({"rotary_dim": 16}, "rotary_dim=16 is not supported"),
        ({"eos_token_id": [1, 2]}, r"eos_token_id=\[1, 2\] is not supported"),
    ],
)
def test_unsupported_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_hf(GPTJForCausalLM(hf_config(**overrides)))


def test_unmatched_and_missing_keys():
    check_unmatched_keys(
        GPTJForCausalLM(hf_config()), "transformer.h.0.attn.q_norm.weight", "transformer.h.1.attn.v_proj.weight"
    )


def test_backbone_options_validate():
    args = GPTJModel.get_args(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB, rotary_dim=3)
    with pytest.raises(ValueError, match=r"rotary_dim \(3\) must be even"):
        GPTJModel(args)
    args.rotary_dim = 4
    with pytest.raises(ValueError, match="'parallel' has no cross-attention"):
        GPTJModel(args, is_decoder=True)
