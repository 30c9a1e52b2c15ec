"""BERT (``BertForMaskedLM``, and the headless ``BertModel``) <-> sat ``BertModel``.

``encoder_family`` serves RoBERTa too (``sat.hf.families.roberta``). Post-LN moves the layer
norms by one place: sat's layer ``i`` normalises its input, HF's layer ``i`` its output. So HF's
``embeddings.LayerNorm`` is sat layer 0's ``input_layernorm``, HF layer ``i``'s
``output.LayerNorm`` is sat layer ``i + 1``'s ``input_layernorm``, and the last one is sat's
``final_layernorm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sat.hf.family import Family, register_family
from sat.hf.mapping import concat, tied

_LAYER = "transformer.layers.{}."
# HF's separate query, key and value stack into sat's fused [Q; K; V].
QKV = concat(lambda ctx: [ctx["hidden_size"]] * 3, "qkv")
# One sat tensor saved under two tied HF names (the decoder bias is also the head's ``bias``).
TIED = tied(2)
# Buffers, and heads that a masked-LM checkpoint may carry besides its own (bert-base-uncased
# ships the pooler and the next-sentence head; transformers drops them the same way).
IGNORE_HF = (
    r"(\w+\.)?embeddings\.(position_ids|token_type_ids)",
    r"(bert|roberta)\.pooler\..*",
    r"cls\.seq_relationship\..*",
)


def weight_bias(sat: str, hf: str) -> list[tuple]:
    return [(sat + ".weight", hf + ".weight"), (sat + ".bias", hf + ".bias")]


def encoder_table(prefix: str, num_layers: int) -> list[tuple]:
    """Rows of a BERT-style encoder whose HF names start with ``prefix`` (``"bert."``,
    ``"roberta."``, or ``""`` in a headless model)."""
    embeddings, layer = prefix + "embeddings.", prefix + "encoder.layer.{}."
    qkv = tuple(layer + f"attention.self.{name}" for name in ("query", "key", "value"))
    rows = [
        ("transformer.word_embeddings.weight", embeddings + "word_embeddings.weight"),
        ("transformer.position_embeddings.weight", embeddings + "position_embeddings.weight"),
        ("mixins.bert-type.type_embeddings.weight", embeddings + "token_type_embeddings.weight"),
        *weight_bias("transformer.layers.0.input_layernorm", embeddings + "LayerNorm"),
        (_LAYER + "attention.query_key_value.weight", tuple(k + ".weight" for k in qkv), QKV),
        (_LAYER + "attention.query_key_value.bias", tuple(k + ".bias" for k in qkv), QKV),
        *weight_bias(_LAYER + "attention.dense", layer + "attention.output.dense"),
        *weight_bias(_LAYER + "post_attention_layernorm", layer + "attention.output.LayerNorm"),
        *weight_bias(_LAYER + "mlp.dense_h_to_4h", layer + "intermediate.dense"),
        *weight_bias(_LAYER + "mlp.dense_4h_to_h", layer + "output.dense"),
    ]
    for i in range(num_layers):
        sat = f"transformer.layers.{i + 1}.input_layernorm" if i + 1 < num_layers else "transformer.final_layernorm"
        rows += weight_bias(sat, layer.format(i) + "output.LayerNorm")
    return rows


def lm_head_rows(dense: str, norm: str, decoder: str, bias: str) -> list[tuple]:
    """The masked-LM head (``bert-final``); HF saves the vocabulary bias twice, as the
    decoder's and as the head's ``bias``."""
    sat = "mixins.bert-final.lm_head."
    return [
        *weight_bias(sat + "dense", dense),
        *weight_bias(sat + "layer_norm", norm),
        (sat + "decoder.weight", decoder + ".weight"),
        (sat + "decoder.bias", (decoder + ".bias", bias), TIED),
    ]


def encoder_args(config, head_class: str, headless_class: str) -> dict:
    """sat arguments of a BERT-style HF config of class ``head_class`` or ``headless_class``
    (``config.architectures``; none counts as the one with a head). Raises on what sat's BERT
    cannot express."""
    name = (config.architectures or [head_class])[0]
    if name not in (head_class, headless_class):
        raise ValueError(f"{name} is not supported; sat translates {head_class} and {headless_class}")
    if config.hidden_act != "gelu":
        raise ValueError(
            f"{config.model_type} with hidden_act={config.hidden_act!r} is not supported (exact GELU only)"
        )
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{config.model_type} with position_embedding_type={config.position_embedding_type!r} is not supported"
        )
    for flag in ("is_decoder", "add_cross_attention"):
        if getattr(config, flag, False):
            raise ValueError(f"{config.model_type} with {flag}=True is not supported")
    return dict(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        max_sequence_length=config.max_position_embeddings,
        inner_hidden_size=config.intermediate_size,
        layernorm_epsilon=config.layer_norm_eps,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        layernorm_order="post",
        num_types=config.type_vocab_size,
        headless=name == headless_class,
    )


def encoder_config(model, config_class: str, head_class: str, headless_class: str, type_mixin: str = "bert-type"):
    """The HF config of sat ``BertModel``/``RobertaModel`` ``model``, naming the HF class it
    converts to; raises where sat's model is configured in a way HF's cannot express.
    ``type_mixin``: the name of the model's token-type mixin."""
    import transformers

    t = model.transformer
    if t.layernorm_order != "post" or t.layers[0].mlp.activation_func is not F.gelu:
        raise ValueError(f"{type(model).__name__} converts to transformers only post-LN with exact GELU")
    if type_mixin not in model.mixins:
        raise ValueError(
            f"{type(model).__name__} without token types (bert-type; the original library's RoBERTa) has no "
            f"transformers counterpart: {head_class} always adds a token-type embedding. Build it with "
            "use_token_types=True."
        )
    extra = dict(architectures=[headless_class])
    if "bert-final" in model.mixins:
        head = model.get_mixin("bert-final").lm_head.decoder.weight
        extra.update(architectures=[head_class], tie_word_embeddings=bool(torch.equal(head, t.word_embeddings.weight)))
    return getattr(transformers, config_class)(
        num_hidden_layers=t.num_layers,
        hidden_size=t.hidden_size,
        num_attention_heads=t.num_attention_heads,
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_sequence_length,
        intermediate_size=t.inner_hidden_size or 4 * t.hidden_size,
        layer_norm_eps=t.layernorm_epsilon,
        hidden_act="gelu",
        type_vocab_size=model.get_mixin(type_mixin).type_embeddings.num_embeddings,
        hidden_dropout_prob=t.layers[0].attention.output_dropout.p,
        attention_probs_dropout_prob=t.layers[0].attention.attention_dropout.p,
        **extra,
    )


def encoder_family(
    name: str,
    sat_class: str,
    classes: tuple[str, str, str],
    prefix: str,
    lm_head: tuple[str, str, str, str],
    config_to_args: Callable[[object], dict],
) -> Family:
    """A BERT-style family.

    Args:
        classes: the HF config class, the class with the masked-LM head, the headless class.
        prefix: the base model's prefix in the class with the head (none when headless).
        lm_head: the HF names of the head's dense layer, layer norm, decoder and bias.
        config_to_args: HF config -> sat arguments (``encoder_args`` and what the family adds).
    """
    config_class, head_class, headless_class = classes
    dense, norm, decoder, bias = lm_head

    def table(args) -> list[tuple]:  # the encoder with the head, or headless: unprefixed, with the pooler
        if args.headless:
            return encoder_table("", args.num_layers) + weight_bias("mixins.bert-pooler.dense", "pooler.dense")
        return encoder_table(prefix, args.num_layers) + lm_head_rows(dense, norm, decoder, bias)

    def fill_tied(state: dict, config) -> dict:  # what a saved masked-LM directory leaves out
        if bias in state:
            state.setdefault(decoder + ".bias", state[bias])
            if config.tie_word_embeddings and prefix + "embeddings.word_embeddings.weight" in state:
                state.setdefault(decoder + ".weight", state[prefix + "embeddings.word_embeddings.weight"])
        return state

    return Family(
        name=name,
        model_types=(name,),
        sat_class=sat_class,
        hf_class=lambda args: headless_class if args.headless else head_class,
        table=table,
        config_to_args=config_to_args,
        model_to_config=lambda model: encoder_config(model, config_class, head_class, headless_class),
        context=lambda args: {"hidden_size": args.hidden_size},
        prepare_hf_state=fill_tied,
        ignore_hf=IGNORE_HF,
    )


register_family(
    encoder_family(
        "bert",
        "BertModel",
        ("BertConfig", "BertForMaskedLM", "BertModel"),
        "bert.",
        (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            "cls.predictions.decoder",
            "cls.predictions.bias",
        ),
        lambda config: encoder_args(config, "BertForMaskedLM", "BertModel"),
    )
)
