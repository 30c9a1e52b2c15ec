"""GPT-2 (``GPT2LMHeadModel``, and the headless ``GPT2Model``) <-> sat ``GPT2Model``."""

from __future__ import annotations

from sat.hf.family import Family, register_family
from sat.hf.heads import fill_tied_head, head_fields, is_headless
from sat.hf.mapping import TRANSPOSE

_LAYER = "transformer.layers.{}."
_HEAD, _HEADLESS = "GPT2LMHeadModel", "GPT2Model"


def table(args) -> list[tuple]:
    """GPT2LMHeadModel's rows (the base model under ``transformer.``), or the headless
    GPT2Model's (no prefix, no head)."""
    base = "" if args.headless else "transformer."
    hf_layer = base + "h.{}."
    rows = [
        ("transformer.word_embeddings.weight", base + "wte.weight"),
        ("transformer.position_embeddings.weight", base + "wpe.weight"),
        (_LAYER + "input_layernorm.weight", hf_layer + "ln_1.weight"),
        (_LAYER + "input_layernorm.bias", hf_layer + "ln_1.bias"),
        # Conv1D keeps weights as [in, out]; its fused c_attn is [Q; K; V] like query_key_value.
        (_LAYER + "attention.query_key_value.weight", hf_layer + "attn.c_attn.weight", TRANSPOSE),
        (_LAYER + "attention.query_key_value.bias", hf_layer + "attn.c_attn.bias"),
        (_LAYER + "attention.dense.weight", hf_layer + "attn.c_proj.weight", TRANSPOSE),
        (_LAYER + "attention.dense.bias", hf_layer + "attn.c_proj.bias"),
        (_LAYER + "post_attention_layernorm.weight", hf_layer + "ln_2.weight"),
        (_LAYER + "post_attention_layernorm.bias", hf_layer + "ln_2.bias"),
        (_LAYER + "mlp.dense_h_to_4h.weight", hf_layer + "mlp.c_fc.weight", TRANSPOSE),
        (_LAYER + "mlp.dense_h_to_4h.bias", hf_layer + "mlp.c_fc.bias"),
        (_LAYER + "mlp.dense_4h_to_h.weight", hf_layer + "mlp.c_proj.weight", TRANSPOSE),
        (_LAYER + "mlp.dense_4h_to_h.bias", hf_layer + "mlp.c_proj.bias"),
        ("transformer.final_layernorm.weight", base + "ln_f.weight"),
        ("transformer.final_layernorm.bias", base + "ln_f.bias"),
    ]
    return rows if args.headless else [*rows, ("mixins.gpt2-final.lm_head.weight", "lm_head.weight")]


def config_to_args(config) -> dict:
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 with activation {config.activation_function!r} is not supported (tanh GELU only)")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if getattr(config, flag, False):
            raise ValueError(f"GPT-2 with {flag}=True is not supported")
    if not getattr(config, "scale_attn_weights", True):
        raise ValueError("GPT-2 with scale_attn_weights=False is not supported")
    return dict(
        num_layers=config.n_layer,
        hidden_size=config.n_embd,
        num_attention_heads=config.n_head,
        vocab_size=config.vocab_size,
        max_sequence_length=config.n_positions,
        inner_hidden_size=config.n_inner,
        layernorm_epsilon=config.layer_norm_epsilon,
        hidden_dropout=config.resid_pdrop,
        attention_dropout=config.attn_pdrop,
        layernorm_order="pre",
        headless=is_headless(config, _HEADLESS),
    )


def model_to_config(model):
    from transformers import GPT2Config

    t = model.transformer
    special = min(50256, t.vocab_size - 1)  # GPT-2's <|endoftext|>, kept inside small vocabularies
    return GPT2Config(
        n_layer=t.num_layers,
        n_embd=t.hidden_size,
        n_head=t.num_attention_heads,
        vocab_size=t.vocab_size,
        n_positions=t.max_sequence_length,
        n_inner=t.inner_hidden_size,
        layer_norm_epsilon=t.layernorm_epsilon,
        activation_function="gelu_new",
        resid_pdrop=t.layers[0].attention.output_dropout.p,
        embd_pdrop=t.embedding_dropout.p,
        attn_pdrop=t.layers[0].attention.attention_dropout.p,
        bos_token_id=special,
        eos_token_id=special,
        **head_fields(model, "gpt2-final", _HEAD, _HEADLESS),
    )


def prepare_hf_state(state: dict, config) -> dict:
    # GPT-2 ties its head to the embedding whatever the config says, and often leaves it unsaved.
    return fill_tied_head(state, config, _HEADLESS, "transformer.wte.weight", always=True)


register_family(
    Family(
        name="gpt2",
        model_types=("gpt2",),
        sat_class="GPT2Model",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        prepare_hf_state=prepare_hf_state,
        ignore_hf=(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",),
    )
)
