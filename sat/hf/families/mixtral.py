"""Mixtral (``MixtralForCausalLM``, and the headless ``MixtralModel``) <-> sat ``MixtralModel``.

Attention, norms, embeddings and head are LLaMA's rows. The map names the experts as the Hub's
checkpoints store them, one tensor each (``block_sparse_moe.experts.{e}.w1`` the gate, ``w3``
the up and ``w2`` the down projection, ``block_sparse_moe.gate`` the router), so such a
directory loads as it is; transformers 5 stacks them per layer (``mlp.experts.gate_up_proj``
``[experts, 2 * inner, h]``, ``mlp.experts.down_proj`` ``[experts, h, inner]``, ``mlp.gate``),
which ``prepare_hf_state`` splits and ``finish_hf_state`` stacks again.
"""

from __future__ import annotations

import re

import torch

from sat.hf.families import llama
from sat.hf.family import Family, register_family

_HEAD, _HEADLESS = "MixtralForCausalLM", "MixtralModel"
_MOE = "layers.{}.block_sparse_moe."
# sat expert projection (suffix added) -> the Hub's per-expert name.
_EXPERT_ROWS = (("dense_h_to_4h_gate", "w1"), ("dense_h_to_4h", "w3"), ("dense_4h_to_h", "w2"))
_STACKED = re.compile(r"((?:model\.)?layers\.\d+\.)mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)")
_PER_EXPERT = re.compile(
    r"((?:model\.)?layers\.\d+\.)block_sparse_moe\.(gate\.weight|experts\.(\d+)\.(w[123])\.weight)"
)


def table(args) -> list[tuple]:
    """LLaMA's rows without its dense MLP, plus the router and ``num_experts`` experts per layer."""
    base = "" if args.headless else "model."
    rows = [row for row in llama.table(args) if ".mlp." not in row[0]]
    rows.append(("mixins.mlp.gates.{}.weight", base + _MOE + "gate.weight"))
    for expert in range(args.num_experts):
        suffix = f"_{expert}" if expert else ""
        for sat_name, hub_name in _EXPERT_ROWS:
            sat_key = f"transformer.layers.{{}}.mlp.{sat_name}{suffix}.weight"
            rows.append((sat_key, f"{base}{_MOE}experts.{expert}.{hub_name}.weight"))
    return rows


def config_to_args(config) -> dict:
    if getattr(config, "router_jitter_noise", 0.0):
        raise ValueError(f"Mixtral with router_jitter_noise={config.router_jitter_noise} is not supported")
    return {
        **llama.config_to_args(config, name="Mixtral"),  # the same attention, norms and rotary
        "sliding_window": config.sliding_window or 0,
        "num_experts": config.num_local_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
    }


def model_to_config(model):
    from transformers import MixtralConfig

    window = model.transformer.sliding_window
    if isinstance(window, list):
        raise ValueError(f"MixtralConfig has one sliding_window for every layer; this model has {window}")
    return MixtralConfig(
        **llama.config_fields(model, _HEAD, _HEADLESS),
        sliding_window=window or None,
        num_local_experts=model.transformer.num_experts,
        num_experts_per_tok=model.get_mixin("mlp").top_k,
    )


def prepare_hf_state(state: dict, config) -> dict:
    """Split transformers 5's stacked experts into the Hub's per-expert tensors (views, no copy)."""
    state = llama.prepare_hf_state(state, config)  # a tied head that was not saved
    inner = config.intermediate_size
    for key in [key for key in state if _STACKED.fullmatch(key)]:
        layer, name = _STACKED.fullmatch(key).groups()
        tensor = state.pop(key)
        moe = layer + "block_sparse_moe."
        if name == "gate.weight":
            state[moe + name] = tensor
        elif name == "experts.gate_up_proj":  # [experts, 2 * inner, h]: the gate, then the up projection
            for expert, weights in enumerate(tensor):
                state[f"{moe}experts.{expert}.w1.weight"] = weights[:inner]
                state[f"{moe}experts.{expert}.w3.weight"] = weights[inner:]
        else:  # experts.down_proj, [experts, h, inner]
            for expert, weights in enumerate(tensor):
                state[f"{moe}experts.{expert}.w2.weight"] = weights
    return state


def finish_hf_state(state: dict, config) -> dict:
    """Stack the per-expert tensors into transformers 5's ``mlp.experts`` and ``mlp.gate``."""
    parts: dict[str, dict] = {}
    for key in [key for key in state if _PER_EXPERT.fullmatch(key)]:
        layer, name, expert, projection = _PER_EXPERT.fullmatch(key).groups()
        tensor = state.pop(key)
        if expert is None:
            state[layer + "mlp.gate.weight"] = tensor
        else:
            parts.setdefault(layer, {})[(int(expert), projection)] = tensor
    for layer, tensors in parts.items():
        experts = range(config.num_local_experts)
        gate_up = [torch.cat((tensors[(e, "w1")], tensors[(e, "w3")])) for e in experts]
        state[layer + "mlp.experts.gate_up_proj"] = torch.stack(gate_up)  # [experts, 2 * inner, h]
        down = [tensors[(e, "w2")] for e in experts]
        state[layer + "mlp.experts.down_proj"] = torch.stack(down)  # [experts, h, inner]
    return state


register_family(
    Family(
        name="mixtral",
        model_types=("mixtral",),
        sat_class="MixtralModel",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=llama.context,
        prepare_hf_state=prepare_hf_state,
        finish_hf_state=finish_hf_state,
        ignore_hf=llama.IGNORE_HF,
    )
)
