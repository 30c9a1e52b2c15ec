"""MistralModel and the mistral family of sat.hf: tiny random Mistral models (GQA, a sliding
window shorter than the sequences) against transformers' MistralForCausalLM."""

from __future__ import annotations

import json
import os

import pytest
import torch
from lm_checks import (
    HF_TINY,
    IDS,
    SEQ,
    check_batched_prompts,
    check_finetuning_reduces_the_loss,
    check_greedy_generation,
    hf_logits,
    sat_logits,
    sharpen,
    tiny_args,
)
from model_checks import check_hf_round_trip, check_left_padded_batch, check_sat_model
from transformers import MistralConfig, MistralForCausalLM

from sat.hf import from_hf, to_hf
from sat.model.official import MistralModel

WINDOW = 5
assert SEQ > WINDOW  # every sequence here is longer than the window


def tiny_hf(seed: int = 0, scale: float = 3.0, **overrides) -> MistralForCausalLM:
    """A random tiny Mistral with a window of ``WINDOW`` tokens, sharpened by ``scale``."""
    torch.manual_seed(seed)
    config = MistralConfig(**{**HF_TINY, "sliding_window": WINDOW, **overrides})
    return sharpen(MistralForCausalLM(config), scale)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # GQA, window 5 < 12 tokens
        {"num_key_value_heads": 1, "head_dim": 16, "rope_theta": 1e6, "tie_word_embeddings": True},
    ],
)
def test_parity_with_transformers(tmp_path, overrides):
    assert check_hf_round_trip(tiny_hf(**overrides), sat_logits, hf_logits, tmp_path, atol=1e-5) <= 1e-5


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_window_changes_the_output_in_both_libraries(implementation):
    """transformers applies the window in the implementation compared against; without it the
    logits after the first ``WINDOW`` positions differ."""
    windowed = tiny_hf(attn_implementation=implementation)
    model, _ = from_hf(windowed)
    assert model.transformer.sliding_window == WINDOW
    full = tiny_hf(attn_implementation=implementation, sliding_window=None)
    with torch.no_grad():
        expected = hf_logits(windowed)
        assert (expected - hf_logits(full))[:, WINDOW:].abs().max() > 1e-2
        assert torch.equal(expected[:, :WINDOW], hf_logits(full)[:, :WINDOW])
        assert (sat_logits(model) - expected).abs().max() < 1e-5
        assert (sat_logits(from_hf(full)[0]) - hf_logits(full)).abs().max() < 1e-5
    assert from_hf(full)[0].transformer.sliding_window == 0 and to_hf(from_hf(full)[0]).config.sliding_window is None


def test_left_padded_batch_matches_transformers():
    assert check_left_padded_batch(tiny_hf(), IDS) <= 1e-5


@pytest.fixture(scope="module")
def generating_pair():
    hf = tiny_hf(seed=1, scale=6.0)
    return hf, from_hf(hf)[0]


def test_cached_greedy_beyond_the_window_equals_uncached_and_transformers(generating_pair):
    hf, model = generating_pair
    prompt = torch.tensor([3, 17, 42, 90, 7, 61, 5, 20])  # already longer than the window
    tokens = check_greedy_generation(hf, model, prompt, 32)
    assert tokens.shape == (1, 40)


def test_batched_prompts_equal_per_prompt_generation(generating_pair):
    check_batched_prompts(generating_pair[1], [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11]], 12)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = tiny_args(MistralModel)
    assert args.sliding_window == 4096  # Mistral 7B's window
    args.sliding_window = WINDOW
    model = MistralModel(args)
    assert model.transformer.sliding_window == WINDOW and not model.transformer.use_bias
    check_sat_model(model, args, sat_logits, tmp_path)  # the reloaded model windows the same
    with open(os.path.join(args.save, "model_config.json")) as f:
        assert json.load(f)["sliding_window"] == WINDOW


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_mixin_reduces_the_loss(name):
    model, _ = from_hf(tiny_hf())
    check_finetuning_reduces_the_loss(model, name)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "Mistral with rope scaling 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "Mistral with hidden_act 'gelu' is not supported"),
    ],
)
def test_unsupported_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_hf(tiny_hf(**overrides))


def test_per_layer_windows_have_no_mistral_config():
    model, _ = from_hf(tiny_hf())
    model.transformer.sliding_window = [0, WINDOW]
    with pytest.raises(ValueError, match=r"one sliding_window for every layer; this model has \[0, 5\]"):
        to_hf(model)
