"""LLaMA (``LlamaForCausalLM``, and the headless ``LlamaModel``) <-> sat ``LLaMAModel``.

Both use the half-split ("rotate_half") rotary layout, so q/k need no permutation; q, k and v
(GQA: fewer k/v heads) are stacked into ``query_key_value``.
"""

from __future__ import annotations

from sat.hf.family import Family, register_family
from sat.hf.heads import head_fields
from sat.hf.mapping import concat

_LAYER = "transformer.layers.{}."
_HEAD, _HEADLESS = "LlamaForCausalLM", "LlamaModel"

QKV = concat(lambda ctx: ctx["qkv_sizes"], name="qkv")


def is_headless(config) -> bool:
    """Whether ``config`` describes an HF base model (``LlamaModel``, ``Qwen2Model``...: a name
    ending in ``Model`` without ``For``) rather than a causal LM (no architectures: the LM)."""
    architecture = (getattr(config, "architectures", None) or [_HEAD])[0]
    return architecture.endswith("Model") and "For" not in architecture


def table(args, qkv_bias: bool = False) -> list[tuple]:
    """LlamaForCausalLM's rows (the base model under ``model.``), or the headless LlamaModel's
    (no prefix, no head). ``qkv_bias``: the q/k/v projections have biases (Qwen2); the
    other LLaMA-shaped families share these names."""
    base = "" if args.headless else "model."
    hf_layer = base + "layers.{}."
    projections = ("weight", "bias") if qkv_bias else ("weight",)
    rows = [
        ("transformer.word_embeddings.weight", base + "embed_tokens.weight"),
        ("transformer.position_embeddings.inv_freq", None),  # computed from rotary_base; HF recomputes its own
        (_LAYER + "input_layernorm.weight", hf_layer + "input_layernorm.weight"),
        *(
            (
                _LAYER + f"attention.query_key_value.{kind}",
                tuple(hf_layer + f"self_attn.{name}_proj.{kind}" for name in "qkv"),
                QKV,
            )
            for kind in projections
        ),
        (_LAYER + "attention.dense.weight", hf_layer + "self_attn.o_proj.weight"),
        (_LAYER + "post_attention_layernorm.weight", hf_layer + "post_attention_layernorm.weight"),
        (_LAYER + "mlp.dense_h_to_4h_gate.weight", hf_layer + "mlp.gate_proj.weight"),
        (_LAYER + "mlp.dense_h_to_4h.weight", hf_layer + "mlp.up_proj.weight"),
        (_LAYER + "mlp.dense_4h_to_h.weight", hf_layer + "mlp.down_proj.weight"),
        ("transformer.final_layernorm.weight", base + "norm.weight"),
    ]
    return rows if args.headless else [*rows, ("mixins.lm.lm_head.weight", "lm_head.weight")]


def _rope_theta(config, name: str = "LLaMA") -> float:
    # transformers 5 keeps RoPE settings in rope_parameters; 4.x in rope_theta and rope_scaling.
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{name} with rope scaling {rope_type!r} is not supported (plain RoPE only)")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{name} with partial_rotary_factor != 1 is not supported")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def decoder_sizes(config) -> dict:
    """The backbone sizes of a LLaMA-shaped HF config (also GLM's): layers, widths, query and
    key/value heads (0: as many as the queries), head size (None: hidden / heads), vocabulary,
    positions and the RMSNorm epsilon."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return dict(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=heads,
        num_multi_query_heads=0 if kv_heads == heads else kv_heads,
        hidden_size_per_attention_head=None if head_dim * heads == config.hidden_size else head_dim,
        vocab_size=config.vocab_size,
        max_sequence_length=config.max_position_embeddings,
        inner_hidden_size=config.intermediate_size,
        layernorm_epsilon=config.rms_norm_eps,
    )


def config_to_args(config, name: str = "LLaMA") -> dict:
    """The sat arguments of a LLaMA-shaped HF config; ``name`` is the family in error messages."""
    if config.hidden_act != "silu":
        raise ValueError(f"{name} with hidden_act {config.hidden_act!r} is not supported (SwiGLU with silu only)")
    # The backbone's gate projection has no bias, and use_bias would add biases to the MLP too.
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ValueError(f"{name} with {flag}=True is not supported (the backbone's gate projection has no bias)")
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        raise ValueError(f"{name} with pretraining_tp={config.pretraining_tp} is not supported")
    pad = config.pad_token_id
    return dict(
        **decoder_sizes(config),
        rotary_base=_rope_theta(config, name),
        use_bias=False,
        hidden_dropout=0.0,
        attention_dropout=config.attention_dropout,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=-1 if pad is None else pad,
        headless=is_headless(config),
    )


def model_to_config(model):
    from transformers import LlamaConfig

    return LlamaConfig(**config_fields(model, _HEAD, _HEADLESS))


def decoder_config_sizes(transformer) -> dict:
    """``decoder_sizes`` the other way: the HF config's size fields of a sat backbone."""
    heads = transformer.num_attention_heads
    return dict(
        num_hidden_layers=transformer.num_layers,
        hidden_size=transformer.hidden_size,
        num_attention_heads=heads,
        num_key_value_heads=transformer.num_multi_query_heads or heads,
        head_dim=transformer.hidden_size_per_attention_head or transformer.hidden_size // heads,
        vocab_size=transformer.vocab_size,
        max_position_embeddings=transformer.max_sequence_length,
        intermediate_size=transformer.inner_hidden_size or 4 * transformer.hidden_size,
        rms_norm_eps=transformer.layernorm_epsilon,
    )


def config_fields(model, head_class: str, headless_class: str) -> dict:
    """The HF config fields of a LLaMA-shaped sat ``model`` (one of the two classes named)."""
    t = model.transformer
    return dict(
        **decoder_config_sizes(t),
        rope_theta=t.rotary_base,
        attention_dropout=t.layers[0].attention.attention_dropout.p,
        bos_token_id=model.bos_token_id,
        eos_token_id=model.eos_token_id,
        pad_token_id=None if model.pad_token_id == -1 else model.pad_token_id,
        **head_fields(model, "lm", head_class, headless_class),
    )


# Rotary buffers some checkpoints carry; sat recomputes them.
IGNORE_HF = (
    r"(model\.)?rotary_emb\.(original_)?inv_freq",
    r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
)


def context(args) -> dict:
    heads = args.num_attention_heads
    head_dim = args.hidden_size_per_attention_head or args.hidden_size // heads
    kv_heads = args.num_multi_query_heads or heads
    return {"qkv_sizes": (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)}


def prepare_hf_state(state: dict, config) -> dict:
    if getattr(config, "tie_word_embeddings", False) and not is_headless(
        config
    ):  # SmolLM2; lm_head.weight is often not saved
        # A copy: sat's head is a parameter of its own, which must not alias the embedding.
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return state


register_family(
    Family(
        name="llama",
        model_types=("llama",),
        sat_class="LLaMAModel",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=context,
        prepare_hf_state=prepare_hf_state,
        ignore_hf=IGNORE_HF,
    )
)
