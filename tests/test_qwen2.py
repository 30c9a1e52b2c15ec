"""Qwen2Model and the qwen2 family of sat.hf: tiny random Qwen2 models (q/k/v biases, GQA,
optional sliding-window layers) against transformers' Qwen2ForCausalLM (SDPA and eager attention)."""

from __future__ import annotations

import pytest
import torch
from lm_checks import (
    HF_TINY,
    IDS,
    check_batched_prompts,
    check_finetuning_reduces_the_loss,
    check_greedy_generation,
    hf_logits,
    sat_logits,
    sharpen,
    tiny_args,
)
from model_checks import check_hf_round_trip, check_left_padded_batch, check_sat_model, check_unmatched_keys
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers import Qwen2Model as HFQwen2Model

from sat.hf import from_hf, to_hf
from sat.model.official import Qwen2Model

WINDOW = 5  # shorter than the test sequences
SLIDING = {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}  # layer 1 slides


def hf_config(**overrides) -> Qwen2Config:
    return Qwen2Config(**{**HF_TINY, "rope_theta": 1e6, **overrides})


def tiny_hf(seed: int = 0, scale: float = 3.0, base: bool = False, **overrides):
    """A random tiny Qwen2 (``base``: the headless ``Qwen2Model``), sharpened by ``scale``, with
    random q/k/v biases (transformers initialises them to zero)."""
    torch.manual_seed(seed)
    hf = sharpen((HFQwen2Model if base else Qwen2ForCausalLM)(hf_config(**overrides)), scale)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.3)
    return hf


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # GQA, rope_theta 1e6
        {"num_key_value_heads": 4, "tie_word_embeddings": True, "rope_theta": 500.0},  # Qwen2-0.5B's tied head
        SLIDING,
    ],
)
def test_parity_with_transformers(tmp_path, overrides):
    assert check_hf_round_trip(tiny_hf(**overrides), sat_logits, hf_logits, tmp_path, atol=1e-5) <= 1e-5


def test_translated_configuration():
    model, args = from_hf(tiny_hf(**SLIDING))
    t = model.transformer
    assert isinstance(model, Qwen2Model) and list(model.mixins) == ["lm"]
    assert (t.use_qkv_bias, t.use_bias, t.num_multi_query_heads, t.rotary_base) == (True, False, 2, 1e6)
    attention = t.layers[0].attention
    assert attention.query_key_value.bias.shape == (32 + 2 * 16,) and attention.dense.bias is None
    assert t.layers[0].mlp.dense_h_to_4h.bias is None
    assert t.sliding_window == [0, WINDOW] and [layer.attention.sliding_window for layer in t.layers] == [0, WINDOW]
    config = to_hf(model).config
    assert config.layer_types == ["full_attention", "sliding_attention"] and config.sliding_window == WINDOW
    assert config.architectures == ["Qwen2ForCausalLM"]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_sliding_layers_change_the_output(implementation):
    """transformers applies the window in both attention implementations, and so do we."""
    windowed = tiny_hf(**SLIDING, attn_implementation=implementation)
    full = tiny_hf(attn_implementation=implementation)
    with torch.no_grad():
        assert (hf_logits(windowed) - hf_logits(full)).abs().max() > 1e-2
        assert (sat_logits(from_hf(windowed)[0]) - hf_logits(windowed)).abs().max() < 1e-5


def test_headless_model_round_trip():
    base = tiny_hf(base=True)
    model, args = from_hf(base)
    assert args.headless and "lm" not in model.mixins
    with torch.no_grad():
        hidden = base(IDS).last_hidden_state
        assert (sat_logits(model) - hidden).abs().max() < 1e-5
        back = to_hf(model)
        assert type(back) is HFQwen2Model and (back(IDS).last_hidden_state - hidden).abs().max() < 1e-5


def test_left_padded_batch_matches_transformers():
    assert check_left_padded_batch(tiny_hf(**SLIDING), IDS) <= 1e-5


@pytest.fixture(scope="module")
def generating_pair():
    hf = tiny_hf(seed=1, scale=6.0)
    return hf, from_hf(hf)[0]


def test_cached_greedy_equals_uncached_and_transformers(generating_pair):
    hf, model = generating_pair
    tokens = check_greedy_generation(hf, model, torch.tensor([3, 17, 42, 90, 7, 61]), 32)
    assert tokens.shape == (1, 38)


def test_batched_prompts_equal_per_prompt_generation(generating_pair):
    check_batched_prompts(generating_pair[1], [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11]], 12)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = tiny_args(Qwen2Model, sliding_window=[0, WINDOW])
    model = Qwen2Model(args)
    assert model.transformer.use_qkv_bias and not model.transformer.use_bias  # whatever args.use_bias says
    check_sat_model(model, args, sat_logits, tmp_path)


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_mixin_reduces_the_loss(name):
    model, _ = from_hf(tiny_hf())
    check_finetuning_reduces_the_loss(model, name)


def test_unmatched_and_missing_keys():
    check_unmatched_keys(tiny_hf(), "model.layers.0.self_attn.o_proj.bias", "model.layers.1.self_attn.k_proj.bias")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "Qwen2 with rope scaling 'linear' is not supported"),
        ({"hidden_act": "gelu"}, "Qwen2 with hidden_act 'gelu' is not supported"),
        ({"layer_types": ["full_attention", "chunked_attention"]}, r"layer_types \['chunked_attention'\]"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention layers but no sliding_window"),
    ],
)
def test_unsupported_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_hf(Qwen2ForCausalLM(hf_config(**overrides)))


def test_two_window_sizes_have_no_qwen2_config():
    model, _ = from_hf(tiny_hf(**SLIDING))
    model.transformer.sliding_window = [3, WINDOW]
    with pytest.raises(ValueError, match=r"one sliding_window for every sliding layer; this model has \[3, 5\]"):
        to_hf(model)
