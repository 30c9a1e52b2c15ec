"""GPT-J (``GPTJForCausalLM``, and the headless ``GPTJModel``) <-> sat ``GPTJModel``.

Both rotate in the pair layout (channel ``2i`` with ``2i + 1``) on the first ``rotary_dim``
channels of each head, so q/k need no permutation; q, k and v are stacked into
``query_key_value``.
"""

from __future__ import annotations

from sat.hf.families.llama import QKV, context
from sat.hf.family import Family, register_family
from sat.hf.heads import fill_tied_head, head_fields, is_headless

_LAYER = "transformer.layers.{}."
_HEAD, _HEADLESS = "GPTJForCausalLM", "GPTJModel"


def table(args) -> list[tuple]:
    """GPTJForCausalLM's rows (the base model under ``transformer.``), or the headless
    GPTJModel's (no prefix, no head)."""
    base = "" if args.headless else "transformer."
    hf_layer = base + "h.{}."
    rows = [
        ("transformer.word_embeddings.weight", base + "wte.weight"),
        ("transformer.position_embeddings.inv_freq", None),  # computed; HF's sin/cos table is not saved
        (_LAYER + "input_layernorm.weight", hf_layer + "ln_1.weight"),
        (_LAYER + "input_layernorm.bias", hf_layer + "ln_1.bias"),
        (
            _LAYER + "attention.query_key_value.weight",
            tuple(hf_layer + f"attn.{name}_proj.weight" for name in "qkv"),
            QKV,
        ),
        (_LAYER + "attention.dense.weight", hf_layer + "attn.out_proj.weight"),
        (_LAYER + "mlp.dense_h_to_4h.weight", hf_layer + "mlp.fc_in.weight"),
        (_LAYER + "mlp.dense_h_to_4h.bias", hf_layer + "mlp.fc_in.bias"),
        (_LAYER + "mlp.dense_4h_to_h.weight", hf_layer + "mlp.fc_out.weight"),
        (_LAYER + "mlp.dense_4h_to_h.bias", hf_layer + "mlp.fc_out.bias"),
        ("transformer.final_layernorm.weight", base + "ln_f.weight"),
        ("transformer.final_layernorm.bias", base + "ln_f.bias"),
    ]
    head = [("mixins.lm.lm_head.weight", "lm_head.weight"), ("mixins.lm.lm_head.bias", "lm_head.bias")]
    return rows if args.headless else [*rows, *head]


def _rotary_dim(config) -> int | None:
    head_size = config.n_embd // config.n_head
    if config.rotary_dim % 2 or not 0 < config.rotary_dim <= head_size:
        raise ValueError(f"GPT-J with rotary_dim={config.rotary_dim} is not supported (even, at most {head_size})")
    return None if config.rotary_dim == head_size else config.rotary_dim


def _token_id(config, name: str) -> int:
    value = getattr(config, name)
    if value is not None and not isinstance(value, int):
        raise ValueError(f"GPT-J with {name}={value!r} is not supported (a single id or None)")
    return -1 if value is None else value


def config_to_args(config) -> dict:
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-J with activation {config.activation_function!r} is not supported (tanh GELU only)")
    return dict(
        num_layers=config.n_layer,
        hidden_size=config.n_embd,
        num_attention_heads=config.n_head,
        vocab_size=config.vocab_size,
        max_sequence_length=config.n_positions,
        inner_hidden_size=config.n_inner,
        layernorm_epsilon=config.layer_norm_epsilon,
        rotary_dim=_rotary_dim(config),
        hidden_dropout=config.resid_pdrop,
        attention_dropout=config.attn_pdrop,
        bos_token_id=_token_id(config, "bos_token_id"),
        eos_token_id=_token_id(config, "eos_token_id"),
        pad_token_id=_token_id(config, "pad_token_id"),
        headless=is_headless(config, _HEADLESS),
    )


def model_to_config(model):
    from transformers import GPTJConfig

    t = model.transformer
    return GPTJConfig(
        n_layer=t.num_layers,
        n_embd=t.hidden_size,
        n_head=t.num_attention_heads,
        vocab_size=t.vocab_size,
        n_positions=t.max_sequence_length,
        n_inner=t.inner_hidden_size,
        layer_norm_epsilon=t.layernorm_epsilon,
        rotary_dim=t.rotary_dim or t.config.head_size,
        activation_function="gelu_new",
        resid_pdrop=t.layers[0].attention.output_dropout.p,
        embd_pdrop=t.embedding_dropout.p,
        attn_pdrop=t.layers[0].attention.attention_dropout.p,
        **{name: None if value == -1 else value for name, value in _token_ids(model).items()},
        **head_fields(model, "lm", _HEAD, _HEADLESS),
    )


def _token_ids(model) -> dict[str, int]:
    return {name: getattr(model, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}


register_family(
    Family(
        name="gptj",
        model_types=("gptj",),
        sat_class="GPTJModel",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=context,
        prepare_hf_state=lambda state, config: fill_tied_head(state, config, _HEADLESS, "transformer.wte.weight"),
        # Buffers of older transformers versions: the causal mask and the sin/cos table.
        ignore_hf=(r"(transformer\.)?h\.\d+\.attn\.(masked_bias|bias|embed_positions)",),
    )
)
