"""MixtralModel and the mixtral family of sat.hf: a tiny 4-expert, top-2 Mixtral against
transformers' MixtralForCausalLM, its router logits and load-balancing loss, generation,
finetuning, the original's checkpoint layout and model parallelism."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest
import torch
from distributed import assert_grads_equal, gathered_grads, run_workers
from lm_checks import (
    HF_TINY,
    IDS,
    POSITIONS,
    check_batched_prompts,
    check_finetuning_reduces_the_loss,
    check_greedy_generation,
    hf_logits,
    sat_logits,
    sharpen,
    tiny_args,
)
from model_checks import (
    assert_recorded,
    check_hf_round_trip,
    check_left_padded_batch,
    check_sat_model,
    check_written_here_loads_in_original,
)
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM
from transformers import MixtralModel as HFMixtralModel
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from sat import mpu
from sat.hf import from_hf, to_hf
from sat.model import AutoModel, get_model_class
from sat.model.official import MixtralModel
from sat.model.official.mixtral_model import load_balancing_loss, router_logits
from sat.training.model_io import save_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_llama_glm_fixtures import llama_inputs, llama_logits  # noqa: E402

INNER = HF_TINY["intermediate_size"]  # per expert
EXPERTS = dict(num_local_experts=4, num_experts_per_tok=2)


def hf_config(**overrides) -> MixtralConfig:
    return MixtralConfig(**{**HF_TINY, **EXPERTS, **overrides})


def tiny_hf(seed: int = 0, scale: float = 3.0, **overrides) -> MixtralForCausalLM:
    """A random tiny Mixtral (4 experts, top-2), sharpened by ``scale`` (decisive routing)."""
    torch.manual_seed(seed)
    return sharpen(MixtralForCausalLM(hf_config(**overrides)), scale)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # 4 experts, top-2, GQA, rope_theta 1e6 (Mixtral's)
        {"num_key_value_heads": 4, "num_experts_per_tok": 1, "rope_theta": 500.0, "tie_word_embeddings": True},
        {"sliding_window": 8},  # shorter than the 12 tokens
    ],
)
def test_parity_with_transformers(tmp_path, overrides):
    difference = check_hf_round_trip(tiny_hf(**overrides), sat_logits, hf_logits, tmp_path, atol=1e-5)
    assert difference < 1e-5


def test_translated_configuration_and_names():
    model, args = from_hf(tiny_hf())
    t = model.transformer
    assert (t.num_experts, args.num_experts_per_tok, t.rotary_base, t.num_multi_query_heads) == (4, 2, 1e6, 2)
    assert list(model.mixins) == ["lm", "mlp"] and model.get_mixin("mlp").top_k == 2
    assert [tuple(gate.weight.shape) for gate in model.get_mixin("mlp").gates] == [(4, 32)] * 2
    assert t.layers[1].mlp.dense_h_to_4h_gate_3.weight.shape == (INNER, 32)  # expert 3 of layer 1
    assert not hasattr(t.layers[0].mlp, "dense_h_to_4h_0")  # expert 0 is unsuffixed, as in the original
    config = to_hf(model).config
    assert (config.num_local_experts, config.num_experts_per_tok, config.architectures) == (
        4,
        2,
        ["MixtralForCausalLM"],
    )


def test_router_logits_and_load_balancing_loss_equal_transformers():
    hf = tiny_hf()
    model, _ = from_hf(hf)
    attention = torch.ones(2, 12, dtype=torch.long)
    attention[1, :5] = 0
    with torch.no_grad():
        expected = hf(IDS, output_router_logits=True)
        logits = router_logits(model(IDS, POSITIONS, -1)[1:])
    assert len(logits) == 2 and logits[0].shape == (24, 4)  # per layer [b * s, experts]
    for ours, theirs in zip(logits, expected.router_logits):
        assert (ours - theirs).abs().max() < 1e-6
    assert abs(load_balancing_loss(logits, top_k=2).item() - expected.aux_loss.item()) < 1e-6
    masked = load_balancing_loss_func(expected.router_logits, 4, 2, attention)
    assert abs(load_balancing_loss(logits, top_k=2, attention_mask=attention).item() - masked.item()) < 1e-6


def test_aux_loss_trains_the_router_towards_balance():
    model, _ = from_hf(tiny_hf())
    gates = model.get_mixin("mlp").gates
    optimizer = torch.optim.SGD(gates.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        loss = load_balancing_loss(router_logits(model(IDS, POSITIONS, -1)[1:]), top_k=2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(gate.weight.grad.abs().sum() > 0 for gate in gates)
    assert losses[0] > 2.05 and losses[-1] < losses[0] - 0.02  # about top_k (2) when balanced


def test_aux_loss_gradients_through_activation_checkpointing():
    model, _ = tiny_sat()
    model.train()
    grads = []
    for checkpointed in (False, True):
        model.transformer.checkpoint_activations = checkpointed
        model.zero_grad()
        logits, *per_layer = model(IDS, POSITIONS, -1)
        (logits.square().mean() + load_balancing_loss(router_logits(per_layer), top_k=2)).backward()
        grads.append({name: param.grad.clone() for name, param in model.named_parameters()})
    assert all(torch.equal(grads[1][name], grad) for name, grad in grads[0].items())


def test_headless_model_round_trip():
    torch.manual_seed(0)
    base = HFMixtralModel(hf_config()).eval()
    model, args = from_hf(base)
    assert args.headless and "lm" not in model.mixins
    with torch.no_grad():
        hidden = base(IDS).last_hidden_state
        assert (sat_logits(model) - hidden).abs().max() < 1e-5
        back = to_hf(model)
        assert type(back) is HFMixtralModel and (back(IDS).last_hidden_state - hidden).abs().max() < 1e-5


def test_left_padded_batch_matches_transformers():
    assert check_left_padded_batch(tiny_hf(), IDS) < 1e-5


@pytest.fixture(scope="module")
def generating_pair():
    hf = tiny_hf(seed=1, scale=6.0)
    return hf, from_hf(hf)[0]


def test_cached_greedy_equals_uncached_and_transformers(generating_pair):
    check_greedy_generation(*generating_pair, torch.tensor([3, 17, 42, 90, 7, 61]), 32)


def test_batched_prompts_equal_per_prompt_generation(generating_pair):
    check_batched_prompts(generating_pair[1], [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11]], 12)


def tiny_sat(seed: int = 0, **overrides):
    """A MixtralModel of its own: lm_checks' tiny sizes, 4 experts of width INNER."""
    args = tiny_args(MixtralModel, **{"inner_hidden_size": INNER, "num_experts": 4, "use_bias": False, **overrides})
    torch.manual_seed(seed)
    return MixtralModel(args), args


def test_sat_model_trains_saves_and_reloads(tmp_path):
    model, args = tiny_sat()
    assert (args.bos_token_id, args.eos_token_id, args.num_experts_per_tok) == (1, 2, 2)  # the original's
    assert model.transformer.is_rotary_emb and model.transformer.is_gated_mlp
    check_sat_model(model, args, sat_logits, tmp_path)
    with open(os.path.join(args.save, "model_config.json")) as f:
        saved = json.load(f)
    assert (saved["model_class"], saved["num_experts"], saved["num_experts_per_tok"]) == ("MixtralModel", 4, 2)


def test_importable_names_and_command_line_arguments():
    import sat.model  # the original's scripts import the zoo from here

    assert sat.model.MixtralModel is MixtralModel and get_model_class("MixtralModel") is MixtralModel
    args = MixtralModel.get_args()
    assert (args.num_experts, args.num_experts_per_tok, args.bos_token_id, args.eos_token_id) == (8, 2, 1, 2)
    # The original's scripts parse the model's arguments first, then the rest with sat.get_args.
    parser = MixtralModel.add_model_specific_args(argparse.ArgumentParser(add_help=False))
    known, rest = parser.parse_known_args(["--num-experts", "4", "--num-experts-per-tok", "1", "--num-layers", "2"])
    assert (known.num_experts, known.num_experts_per_tok, rest) == (4, 1, ["--num-layers", "2"])


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_mixin_reduces_the_loss(name):
    model, _ = tiny_sat()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(5.0)  # sharper than a fresh init, like the other families' tiny models
    check_finetuning_reduces_the_loss(model, name)  # LLaMA's attention: 4 heads, 2 key/value heads
    assert not any(gate.weight.requires_grad for gate in model.get_mixin("mlp").gates)


def test_checkpoint_in_the_original_layout_loads():
    """The original kept rotary (base 1e6, hard-coded) in a ``rotary`` mixin and recorded no base;
    its keys load, and the model takes that base (what ``to_hf`` exports as ``rope_theta``)."""
    hf = tiny_hf()
    model, _ = from_hf(hf)
    state = dict(model.state_dict())
    state["mixins.rotary.rotary_emb.inv_freq"] = state.pop("transformer.position_embeddings.inv_freq")
    fresh, _ = tiny_sat()
    assert fresh.transformer.rotary_base == 10000.0  # built without a base: the backbone's default
    fresh.load_state_dict(state, strict=True)
    assert fresh.transformer.rotary_base == 1e6 and fresh.transformer.position_embeddings.base == 1e6
    with torch.no_grad():
        assert (sat_logits(fresh.eval()) - hf_logits(hf)).abs().max() < 1e-5
        assert (hf_logits(to_hf(fresh)) - hf_logits(hf)).abs().max() < 1e-5


def test_checkpoint_written_by_the_original_loads_with_its_logits():
    """The original 0.4.12's MixtralModel (rotary mixin, base 1e6; 4 experts, top-2; written by
    tests/fixtures/original_sat/make_mixtral_fixtures.py) computes here what it computed there,
    and as a transformers model."""
    folder = os.path.join(FIXTURES, "written_by_original", "mixtral")
    model, args = AutoModel.from_pretrained(folder)
    assert isinstance(model, MixtralModel) and list(model.mixins) == ["lm", "mlp"]
    assert (model.transformer.rotary_base, args.num_experts, args.num_experts_per_tok) == (1e6, 4, 2)
    assert_recorded(llama_logits(model), os.path.join(folder, "logits_by_original.pt"))
    expected = torch.load(os.path.join(folder, "logits_by_original.pt"), weights_only=True)["causal"]
    with torch.no_grad():
        assert (to_hf(model)(llama_inputs()[0]).logits - expected).abs().max() < 1e-5


def test_checkpoint_written_here_loads_in_original(tmp_path):
    check_written_here_loads_in_original(os.path.join(FIXTURES, "written_by_ours", "mixtral"), llama_logits, tmp_path)


def test_directory_with_per_expert_tensors_loads(tmp_path):
    """The Hub's Mixtral checkpoints store each expert's w1/w2/w3 (transformers 4's layout)."""
    hf = tiny_hf()
    hf.config.save_pretrained(tmp_path)
    state = {}
    for key, value in hf.state_dict().items():
        layer, _, name = key.partition(".mlp.")
        if name == "gate.weight":
            state[f"{layer}.block_sparse_moe.gate.weight"] = value
        elif name == "experts.gate_up_proj":
            for expert, weights in enumerate(value):
                state[f"{layer}.block_sparse_moe.experts.{expert}.w1.weight"] = weights[:INNER].contiguous()
                state[f"{layer}.block_sparse_moe.experts.{expert}.w3.weight"] = weights[INNER:].contiguous()
        elif name == "experts.down_proj":
            for expert, weights in enumerate(value):
                state[f"{layer}.block_sparse_moe.experts.{expert}.w2.weight"] = weights.contiguous()
        else:
            state[key] = value.contiguous()
    save_file(state, os.path.join(tmp_path, "model.safetensors"))
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    assert isinstance(model, MixtralModel)
    with torch.no_grad():
        assert (sat_logits(model) - hf_logits(hf)).abs().max() < 1e-5


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"router_jitter_noise": 0.1}, "router_jitter_noise=0.1 is not supported"),
        ({"hidden_act": "gelu"}, "Mixtral with hidden_act 'gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "Mixtral with rope scaling 'linear'"),
        ({"num_experts_per_tok": 5}, r"num_experts_per_tok \(5\) must be in 1..num_experts \(4\)"),
    ],
)
def test_unsupported_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_hf(MixtralForCausalLM(hf_config(**overrides)))


def _mp_worker(rank: int, world: int, folder: str) -> dict:
    model, _ = AutoModel.from_pretrained(folder, overwrite_args={"model_parallel_size": world})
    logits, *per_layer = model(IDS, POSITIONS, -1)
    logits.square().mean().backward()
    mlp = model.transformer.layers[0].mlp
    return {
        "logits": logits.detach(),
        "router": torch.stack(router_logits(per_layer)).detach(),
        "grads": gathered_grads(model),
        # Every rank holds every expert, each split like a dense MLP: [inner / world, h].
        "expert shard": tuple(mlp.dense_h_to_4h_gate_3.weight.shape),
        "world": mpu.get_model_parallel_world_size(),
    }


@pytest.mark.multiprocess
def test_mp2_logits_and_gradients_equal_mp1(tmp_path):
    model, args = tiny_sat()
    with torch.no_grad():
        for gate in model.get_mixin("mlp").gates:
            gate.weight.mul_(5.0)  # decisive routing: every expert gets tokens
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    logits, *per_layer = model(IDS, POSITIONS, -1)
    logits.square().mean().backward()
    for result in run_workers(_mp_worker, 2, str(tmp_path)):
        assert result["world"] == 2 and result["expert shard"] == (INNER // 2, 32)
        assert (result["logits"] - logits).abs().max() < 1e-5
        assert (result["router"] - torch.stack(router_logits(per_layer))).abs().max() < 1e-5
        assert_grads_equal(result["grads"], model)
