"""GPTNeoModel and the gpt_neo family of sat.hf: global and local (windowed) attention layers."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from finetune_cases import tiny_model
from lm_checks import check_finetuning_reduces_the_loss, check_greedy_generation
from model_checks import (
    assert_recorded,
    check_hf_round_trip,
    check_left_padded_batch,
    check_sat_model,
    check_unmatched_keys,
    check_written_here_loads_in_original,
)
from transformers import GPTNeoConfig, GPTNeoForCausalLM
from transformers import GPTNeoModel as HFGPTNeoModel

import sat.model
from sat.generation import BaseStrategy, batch_filling_sequence
from sat.hf import from_hf, hf_to_sat_state_dict, to_hf
from sat.model import AutoModel, get_model_class
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin, KVCache
from sat.model.finetune import PrefixTuningMixin
from sat.model.official import GPTNeoModel
from sat.model.official.gptneo_model import expand_attention_types

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_gpt_neo_fixtures import gpt_neo_inputs, gpt_neo_logits  # noqa: E402

WINDOW = 4  # the sequences below are longer: local layers must not see the whole past
IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(12).expand(2, 12)


def hf_config(**overrides) -> GPTNeoConfig:
    values = dict(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        vocab_size=100,
        max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]],
        window_size=WINDOW,
        initializer_range=0.1,  # sharper attention than HF's 0.02: the window changes the logits a lot
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTNeoConfig(**{**values, **overrides})


def hf_model(**overrides) -> GPTNeoForCausalLM:
    torch.manual_seed(0)
    return GPTNeoForCausalLM(hf_config(**overrides)).eval()


def sat_logits(model):
    return model(IDS, POSITIONS, -1)[0]


def hf_logits(hf):
    return hf(IDS).logits


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # global, local; tied head
        {"tie_word_embeddings": False, "intermediate_size": 48},
        {"attention_types": [[["local"], 2]], "window_size": 3},
    ],
)
def test_parity_with_transformers(tmp_path, overrides):
    difference = check_hf_round_trip(hf_model(**overrides), sat_logits, hf_logits, tmp_path, atol=1e-5)
    assert difference < 1e-5


def test_translated_configuration_and_the_window_matters():
    hf = hf_model(tie_word_embeddings=False)
    model, args = from_hf(hf)
    attention = model.get_mixin("gpt-attn")
    assert (attention.attention_types, attention.window_size) == (["global", "local"], WINDOW)
    assert [attention.window_of_layer(i) for i in range(2)] == [0, WINDOW]
    assert list(model.mixins) == ["gpt-type", "gpt-attn", "lm"] and args.untie_word_embeddings
    qkv = model.transformer.layers[0].attention.query_key_value
    assert qkv.weight.shape == (96, 32) and torch.equal(qkv.bias, torch.zeros(96))  # HF has no q/k/v bias
    with torch.no_grad():
        expected = hf_logits(hf)
        attention.window_size = 12  # as wide as the sequence: layer 1 becomes global
        assert (sat_logits(model) - expected).abs().max() > 1e-2


def test_no_mask_is_causal_and_token_types_use_the_word_embeddings():
    hf = hf_model()
    model, _ = from_hf(hf)
    types = torch.randint(0, 100, IDS.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(IDS, POSITIONS, None)[0] - hf_logits(hf)).abs().max() < 1e-5
        got = model(IDS, POSITIONS, -1, token_type_ids=types)[0]
        assert (got - hf(IDS, token_type_ids=types).logits).abs().max() < 1e-5


def test_padded_batch_matches_transformers():
    assert check_left_padded_batch(hf_model(), IDS, pad=4) < 1e-5


def test_headless_source_and_directory(tmp_path):
    torch.manual_seed(0)
    base = HFGPTNeoModel(hf_config()).eval()
    base.save_pretrained(tmp_path / "base")
    model, args = AutoModel.from_pretrained(str(tmp_path / "base"))
    assert isinstance(model, GPTNeoModel) and args.headless and "final" in model.mixins
    with torch.no_grad():
        hidden = base(IDS).last_hidden_state
        assert (sat_logits(model) - hidden).abs().max() < 1e-5  # no head: hidden states
        back = to_hf(model)
        assert type(back) is HFGPTNeoModel and (back(IDS).last_hidden_state - hidden).abs().max() < 1e-5


def test_directory_loads_and_old_mask_buffers_are_dropped(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)  # the tied lm_head is not saved
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert (sat_logits(model) - hf_logits(hf)).abs().max() < 1e-5
    state = hf.state_dict()  # as older transformers versions saved it: with the masks
    state["transformer.h.1.attn.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    state["transformer.h.1.attn.attention.masked_bias"] = torch.tensor(-1e9)
    converted = hf_to_sat_state_dict(state, hf.config)
    assert all(torch.equal(converted[key], value) for key, value in model.state_dict().items())


def cached_model(hf) -> torch.nn.Module:
    model, _ = from_hf(hf)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    return model


@pytest.mark.parametrize("prefix", [False, True])
def test_cached_decoding_equals_full_forward_past_the_window(prefix):
    model, _ = from_hf(hf_model())
    if prefix:  # the prefix counts as the earliest keys in both runs (the original's window)
        model.add_mixin("prefix", PrefixTuningMixin(2, 8, 4, 2))
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    cache = KVCache(num_layers=2)
    with torch.no_grad():
        full = sat_logits(model)
        outputs = [model(IDS[:, :3], POSITIONS[:, :3], -1, mems=cache)[0]]  # a prompt shorter than the window
        outputs += [model(IDS[:, i : i + 1], POSITIONS[:, i : i + 1], -1, mems=cache)[0] for i in range(3, 12)]
    assert cache.length == 12
    assert (torch.cat(outputs, dim=1) - full).abs().max() < 1e-5


def test_greedy_generation_cached_equals_uncached_and_transformers():
    hf = hf_model()
    tokens = check_greedy_generation(hf, cached_model(hf), IDS[0, :8], 32)  # 40 positions, ten windows
    assert tokens.shape == (1, 40)


def test_batched_prompts_equal_transformers_per_prompt():
    hf = hf_model()
    model = cached_model(hf)
    prompts = [IDS[0, :3], IDS[1, :9], IDS[0, 2:12]]  # left-padded to 10 in the batch
    rows = batch_filling_sequence(model, prompts, 12, BaseStrategy(top_k=1))
    for prompt, row in zip(prompts, rows):
        with torch.no_grad():
            expected = hf.generate(prompt[None], max_new_tokens=12, min_new_tokens=12, do_sample=False)[0]
        assert torch.equal(row, expected)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = GPTNeoModel.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=100,
        max_sequence_length=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_types="local,global",
        window_size="3",
    )
    model = GPTNeoModel(args)
    assert sat.model.GPTNeoModel is GPTNeoModel and get_model_class("GPTNeoModel") is GPTNeoModel
    assert list(model.mixins) == ["gpt-type", "gpt-attn"]  # tied head: the word embeddings
    assert model.get_mixin("gpt-attn").attention_types == ["local", "global"]
    check_sat_model(model, args, sat_logits, tmp_path)
    loaded, loaded_args = AutoModel.from_pretrained(args.save)
    assert (loaded_args.attention_types, loaded_args.window_size) == ("local,global", "3")


def test_checkpoint_of_the_original_loads_with_identical_outputs():
    """Written by the original 0.4.12 (attention types a list, window 3 over 8 tokens)."""
    folder = os.path.join(FIXTURES, "written_by_original", "gpt_neo")
    model, _ = AutoModel.from_pretrained(folder)
    assert isinstance(model, GPTNeoModel) and list(model.mixins) == ["gpt-type", "gpt-attn"]
    assert model.get_mixin("gpt-attn").attention_types == ["global", "local"]
    outputs = gpt_neo_logits(model)
    assert_recorded(outputs, os.path.join(folder, "logits_by_original.pt"))
    input_ids, position_ids = gpt_neo_inputs()
    with torch.no_grad():  # the causal mask the original could not take gives the same logits
        assert (model(input_ids, position_ids, -1)[0] - outputs["no_mask"]).abs().max() < 1e-6


def test_checkpoint_written_here_loads_in_original(tmp_path):
    check_written_here_loads_in_original(os.path.join(FIXTURES, "written_by_ours", "gpt_neo"), gpt_neo_logits, tmp_path)


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_mixins_reduce_the_loss(name):
    model, _ = tiny_model(GPTNeoModel, dict(attention_types="global,local", window_size="4"))
    losses = check_finetuning_reduces_the_loss(model, name, family="gpt_neo")  # 12 tokens: past the window
    print(f"gpt_neo {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, ["global", "local"] * 2),
        ("local", ["local"] * 4),
        ('["global", "local", "local", "global"]', ["global", "local", "local", "global"]),
        ([[["global", "local"], 2]], ["global", "local"] * 2),  # HF's attention_types
    ],
)
def test_attention_type_formats(value, expected):
    assert expand_attention_types(value, 4) == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_types="global,sparse"), r"only be 'global' or 'local', got \['sparse'\]"),
        (dict(attention_types="global,local,local"), "does not cover 2 layers"),
        (dict(window_size="0"), "window_size must be at least 1"),
    ],
)
def test_bad_arguments(overrides, message):
    args = GPTNeoModel.get_args(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, **overrides)
    with pytest.raises(ValueError, match=message):
        GPTNeoModel(args)


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="activation_function 'relu' is not supported"):
        from_hf(hf_model(activation_function="relu"))
    model, _ = from_hf(hf_model())
    with torch.no_grad():
        model.transformer.layers[1].attention.query_key_value.bias[0] = 1.0
    with pytest.raises(ValueError, match="no q/k/v bias"):
        to_hf(model)
    check_unmatched_keys(
        hf_model(), "transformer.h.0.attn.attention.extra.weight", "transformer.h.1.attn.attention.k_proj.weight"
    )
