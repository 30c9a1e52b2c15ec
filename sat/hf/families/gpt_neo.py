"""GPT-Neo (``GPTNeoForCausalLM``, and the headless ``GPTNeoModel``) <-> sat ``GPTNeoModel``.

HF's separate q/k/v projections (no bias) stack into ``query_key_value``, whose bias (the
original's layout has one) is zero; HF's ``attention_layers`` and ``window_size`` become
``attention_types`` and ``window_size``. The head is the word embedding when HF ties it (the
default), sat's ``lm`` mixin otherwise.
"""

from __future__ import annotations

import torch

from sat.hf.family import Family, register_family
from sat.hf.heads import fill_tied_head, is_headless
from sat.hf.mapping import Transform, concat, tied

_LAYER = "transformer.layers.{}."
_HEAD, _HEADLESS = "GPTNeoForCausalLM", "GPTNeoModel"
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")

QKV = concat(lambda ctx: [ctx["hidden_size"]] * 3, name="qkv")


def _zero_bias_to_hf(bias: torch.Tensor, ctx: dict) -> list[torch.Tensor]:
    if bias.count_nonzero():
        raise ValueError("GPT-Neo in transformers has no q/k/v bias, but this model's query_key_value.bias is not zero")
    return []


# sat's query_key_value.bias, which HF lacks: zeros on the way in, checked to be zero on the way out.
ZERO_QKV_BIAS = Transform("zero-bias", lambda ts, ctx: torch.zeros(3 * ctx["hidden_size"]), _zero_bias_to_hf)


def table(args) -> list[tuple]:
    """GPTNeoForCausalLM's rows (the base model under ``transformer.``; the head tied to the
    embedding or sat's ``lm``), or the headless GPTNeoModel's (no prefix, no head)."""
    base = "" if args.headless else "transformer."
    hf_layer = base + "h.{}."
    attention = hf_layer + "attn.attention."
    tied_head = not (args.headless or args.untie_word_embeddings)
    embedding = (base + "wte.weight", "lm_head.weight") if tied_head else base + "wte.weight"
    rows = [
        ("transformer.word_embeddings.weight", embedding, tied(2) if tied_head else None),
        ("transformer.position_embeddings.weight", base + "wpe.weight"),
        (_LAYER + "input_layernorm.weight", hf_layer + "ln_1.weight"),
        (_LAYER + "input_layernorm.bias", hf_layer + "ln_1.bias"),
        (_LAYER + "attention.query_key_value.weight", tuple(attention + f"{n}_proj.weight" for n in "qkv"), QKV),
        (_LAYER + "attention.query_key_value.bias", (), ZERO_QKV_BIAS),
        (_LAYER + "attention.dense.weight", attention + "out_proj.weight"),
        (_LAYER + "attention.dense.bias", attention + "out_proj.bias"),
        (_LAYER + "post_attention_layernorm.weight", hf_layer + "ln_2.weight"),
        (_LAYER + "post_attention_layernorm.bias", hf_layer + "ln_2.bias"),
        (_LAYER + "mlp.dense_h_to_4h.weight", hf_layer + "mlp.c_fc.weight"),
        (_LAYER + "mlp.dense_h_to_4h.bias", hf_layer + "mlp.c_fc.bias"),
        (_LAYER + "mlp.dense_4h_to_h.weight", hf_layer + "mlp.c_proj.weight"),
        (_LAYER + "mlp.dense_4h_to_h.bias", hf_layer + "mlp.c_proj.bias"),
        ("transformer.final_layernorm.weight", base + "ln_f.weight"),
        ("transformer.final_layernorm.bias", base + "ln_f.bias"),
    ]
    if args.headless or tied_head:
        return rows
    return [*rows, ("mixins.lm.lm_head.weight", "lm_head.weight")]


def config_to_args(config) -> dict:
    if config.activation_function not in _TANH_GELU:
        raise ValueError(
            f"GPT-Neo with activation_function {config.activation_function!r} is not supported (tanh GELU only)"
        )
    if getattr(config, "add_cross_attention", False):
        raise ValueError("GPT-Neo with add_cross_attention=True is not supported")
    headless = is_headless(config, _HEADLESS)
    return dict(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads,
        vocab_size=config.vocab_size,
        max_sequence_length=config.max_position_embeddings,
        inner_hidden_size=config.intermediate_size,
        layernorm_epsilon=config.layer_norm_epsilon,
        hidden_dropout=config.resid_dropout,  # sat's embedding dropout is the same probability
        attention_dropout=config.attention_dropout,
        layernorm_order="pre",
        attention_types=list(config.attention_layers),
        window_size=config.window_size,
        headless=headless,
        untie_word_embeddings=not headless and not config.tie_word_embeddings,
    )


def _hf_attention_types(types: list[str]) -> list:
    """HF's ``[[pattern, repeats]]`` for per-layer ``types``: the shortest repeating pattern."""
    n = len(types)
    length = next(k for k in range(1, n + 1) if n % k == 0 and types == types[:k] * (n // k))  # k = n always fits
    return [[types[:length], n // length]]


def model_to_config(model):
    from transformers import GPTNeoConfig

    t = model.transformer
    attention = model.get_mixin("gpt-attn")
    if "final" in model.mixins:
        head = dict(architectures=[_HEADLESS])
    else:
        head = dict(architectures=[_HEAD], tie_word_embeddings="lm" not in model.mixins)
    special = min(50256, t.vocab_size - 1)  # GPT-Neo's <|endoftext|>, kept inside small vocabularies
    return GPTNeoConfig(
        num_layers=t.num_layers,
        hidden_size=t.hidden_size,
        num_heads=t.num_attention_heads,
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_sequence_length,
        intermediate_size=t.inner_hidden_size,
        layer_norm_epsilon=t.layernorm_epsilon,
        attention_types=_hf_attention_types(attention.attention_types),
        window_size=attention.window_size,
        activation_function="gelu_new",
        resid_dropout=t.layers[0].attention.output_dropout.p,
        embed_dropout=t.embedding_dropout.p,
        attention_dropout=t.layers[0].attention.attention_dropout.p,
        bos_token_id=special,
        eos_token_id=special,
        **head,
    )


def prepare_hf_state(state: dict, config) -> dict:
    return fill_tied_head(state, config, _HEADLESS, "transformer.wte.weight")  # tied, often not saved


register_family(
    Family(
        name="gpt_neo",
        model_types=("gpt_neo",),
        sat_class="GPTNeoModel",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"hidden_size": args.hidden_size},
        prepare_hf_state=prepare_hf_state,
        # Buffers older transformers versions saved: the causal / local masks.
        ignore_hf=(r"(transformer\.)?h\.\d+\.attn\.attention\.(masked_)?bias",),
    )
)
