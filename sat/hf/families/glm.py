"""GLM-4 in transformers' native classes <-> sat ``ChatGLM4Model``: ``GlmForCausalLM``
(model_type ``"glm"``, GLM-4-9B) and ``Glm4ForCausalLM`` (``"glm4"``, GLM-4-0414, whose extra
norms are in ``glm4.py``). One family takes both, since they build the same sat class.

- q, k, v (GQA: fewer k/v heads, biased with ``attention_bias``) stack into ``query_key_value``.
  transformers rotates the first half of each head's channels in pairs ``(2i, 2i + 1)``,
  ``ChatGLM4Model`` in halves (``i`` with ``i + rot / 2``): the q and k rows of that half are
  reordered on the way (scores are unchanged, as q and k move alike).
- the fused ``gate_up_proj`` splits into the backbone's gated MLP (``is_gated_mlp``):
  ``dense_h_to_4h_gate`` (the gate, first half) and ``dense_h_to_4h``.
"""

from __future__ import annotations

import torch

from sat.hf.families import glm4, llama
from sat.hf.family import Family, register_family
from sat.hf.heads import fill_tied_head, head_fields
from sat.hf.mapping import Transform, split

_LAYER, _HF_LAYER = "transformer.layers.{}.", "model.layers.{}."
_HF_CLASS = "GlmForCausalLM"


def rope_order(head_size: int, rotary_dim: int) -> torch.Tensor:
    """A head's channel order in sat: the first ``rotary_dim`` channels from pairs to halves
    (even channels, then odd ones), the rest in place."""
    return torch.cat(
        (torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2), torch.arange(rotary_dim, head_size))
    )


def _reorder_heads(rows: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows ``[heads * hn, ...]`` (a weight or a bias) with each head's channels in ``order``."""
    return rows.unflatten(0, (-1, len(order)))[:, order].flatten(0, 1)


def _qkv_to_sat(tensors: list[torch.Tensor], ctx: dict) -> torch.Tensor:
    query, key, value = tensors
    order = rope_order(ctx["head_size"], ctx["rotary_dim"])
    return torch.cat((_reorder_heads(query, order), _reorder_heads(key, order), value), dim=0)


def _qkv_to_hf(fused: torch.Tensor, ctx: dict) -> list[torch.Tensor]:
    query, key, value = torch.split(fused, list(ctx["qkv_sizes"]), dim=0)
    inverse = torch.argsort(rope_order(ctx["head_size"], ctx["rotary_dim"]))
    return [_reorder_heads(query, inverse), _reorder_heads(key, inverse), value.contiguous()]


QKV = Transform("qkv-rope-halves", _qkv_to_sat, _qkv_to_hf)
GATE_UP = split(lambda ctx: (ctx["inner"], ctx["inner"]), name="gate-up")


def table(args) -> list[tuple]:
    """The rows of ``GlmForCausalLM``, plus GLM-4-0414's norms for the sandwich order."""
    qkv = tuple(_HF_LAYER + f"self_attn.{name}_proj.weight" for name in "qkv")
    rows = [
        ("transformer.word_embeddings.weight", "model.embed_tokens.weight"),
        ("mixins.attn.rotary_pos_emb.inv_freq", None),  # computed from rotary_base; HF recomputes its own
        (_LAYER + "input_layernorm.weight", _HF_LAYER + "input_layernorm.weight"),
        (_LAYER + "attention.query_key_value.weight", qkv, QKV),
        (_LAYER + "attention.dense.weight", _HF_LAYER + "self_attn.o_proj.weight"),
        (_LAYER + "post_attention_layernorm.weight", _HF_LAYER + "post_attention_layernorm.weight"),
        (
            (_LAYER + "mlp.dense_h_to_4h_gate.weight", _LAYER + "mlp.dense_h_to_4h.weight"),
            _HF_LAYER + "mlp.gate_up_proj.weight",
            GATE_UP,
        ),
        (_LAYER + "mlp.dense_4h_to_h.weight", _HF_LAYER + "mlp.down_proj.weight"),
        ("transformer.final_layernorm.weight", "model.norm.weight"),
        ("mixins.chatglm-final.lm_head.weight", "lm_head.weight"),
    ]
    if args.use_qkv_bias:
        rows.append(
            (_LAYER + "attention.query_key_value.bias", tuple(name[: -len("weight")] + "bias" for name in qkv), QKV)
        )
    if args.layernorm_order == glm4.LAYERNORM_ORDER:
        rows += glm4.SANDWICH_ROWS
    return rows


def _rope_theta(config) -> float:
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"GLM with rope scaling {rope_type!r} is not supported (plain RoPE only)")
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 0.5))
    if factor != 0.5:
        raise ValueError(
            f"GLM with partial_rotary_factor={factor} is not supported (ChatGLM4Model rotates half of each head)"
        )
    return float(params.get("rope_theta", 10000.0))


def config_to_args(config) -> dict:
    lm_class = glm4.HF_CLASS if config.model_type == glm4.MODEL_TYPE else _HF_CLASS
    architecture = (getattr(config, "architectures", None) or [lm_class])[0]
    if architecture != lm_class:
        raise ValueError(f"GLM as {architecture} is not supported: only the causal LM {lm_class} translates")
    if config.hidden_act != "silu":
        raise ValueError(f"GLM with hidden_act {config.hidden_act!r} is not supported (SwiGLU with silu only)")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 4:
        raise ValueError(f"GLM with head_dim={head_dim} is not supported (half of it must be an even rotary width)")
    eos = config.eos_token_id
    return dict(
        **llama.decoder_sizes(config),
        layernorm_order=glm4.LAYERNORM_ORDER if config.model_type == glm4.MODEL_TYPE else "pre",
        rotary_base=_rope_theta(config),
        use_bias=False,
        use_qkv_bias=bool(config.attention_bias),
        is_gated_mlp=True,
        hidden_dropout=0.0,
        attention_dropout=config.attention_dropout,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=None if eos is None else (list(eos) if isinstance(eos, list | tuple) else [eos]),
    )


def model_to_config(model):
    t = model.transformer
    if "mlp" in model.mixins:
        raise ValueError(
            "to_hf of a ChatGLM4Model with its gate in the 'mlp' mixin (the original's layout) is not supported: "
            "build it with is_gated_mlp=True (the gate as transformer.layers.N.mlp.dense_h_to_4h_gate)"
        )
    sandwich = t.layernorm_order == glm4.LAYERNORM_ORDER
    if t.layernorm_order not in ("pre", glm4.LAYERNORM_ORDER):
        raise ValueError(f"GLM has no layernorm_order {t.layernorm_order!r} (pre: GLM, sandwich: GLM-4-0414)")
    if sandwich:
        config_class = glm4.config_class()
    else:
        from transformers import GlmConfig as config_class
    eos = model.eos_token_id
    return config_class(
        **head_fields(model, "chatglm-final", glm4.HF_CLASS if sandwich else _HF_CLASS, "GlmModel"),
        **llama.decoder_config_sizes(t),
        rope_parameters={"rope_type": "default", "rope_theta": t.rotary_base, "partial_rotary_factor": 0.5},
        attention_bias=t.use_qkv_bias,
        attention_dropout=t.layers[0].attention.attention_dropout.p,
        pad_token_id=model.pad_token_id,
        bos_token_id=model.bos_token_id,
        eos_token_id=eos if eos is None or len(eos) > 1 else eos[0],
    )


def context(args) -> dict:
    head_size = args.hidden_size_per_attention_head or args.hidden_size // args.num_attention_heads
    return {
        **llama.context(args),  # qkv_sizes
        "head_size": head_size,
        "rotary_dim": head_size // 2,
        "inner": args.inner_hidden_size or 4 * args.hidden_size,
    }


def prepare_hf_state(state: dict, config) -> dict:
    return fill_tied_head(state, config, "GlmModel", "model.embed_tokens.weight")  # a tied head left unsaved


register_family(
    Family(
        name="glm",
        model_types=("glm", glm4.MODEL_TYPE),
        sat_class="ChatGLM4Model",
        hf_class=lambda args: glm4.HF_CLASS if args.layernorm_order == glm4.LAYERNORM_ORDER else _HF_CLASS,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=context,
        prepare_hf_state=prepare_hf_state,
        ignore_hf=(r"model\.rotary_emb\.(original_)?inv_freq",),
    )
)
