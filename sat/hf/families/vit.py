"""ViT (``ViTForImageClassification``, and the headless ``ViTModel``) <-> sat ``ViTModel``.

HF's ``[CLS]`` token is sat's one-row word embedding (``pre_len=1``, ``vocab_size=1``).
transformers 5 renamed ViT's modules (``vit.layers.0.attention.q_proj``) but still saves, and
the Hub still holds, the former names (``vit.encoder.layer.0.attention.attention.query``):
the map uses the new names and ``prepare_hf_state`` renames the former.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sat.hf.families.bert import QKV, weight_bias
from sat.hf.family import Family, register_family
from sat.hf.mapping import Transform

_LAYER = "transformer.layers.{}."
# HF keeps a leading batch dimension on the [CLS] token and the position table.
BATCH = Transform("batch", lambda ts, ctx: ts[0].squeeze(0), lambda t, ctx: [t.unsqueeze(0)])
_HEADLESS, _CLASSIFIER = "ViTModel", "ViTForImageClassification"


def tokens(sizes: Callable[[dict], Sequence[int]]) -> Transform:
    """HF's special-token parameters (``[1, n_i, h]`` each: ``cls_token``, ``distillation_token``,
    ``detection_tokens``) stacked into sat's word embeddings ``[sum n_i, h]``; ``sizes(ctx)``
    gives the ``n_i`` for the way back."""
    return Transform(
        "tokens",
        lambda ts, ctx: torch.cat([t.squeeze(0) for t in ts], dim=0),
        lambda t, ctx: [part.unsqueeze(0).contiguous() for part in torch.split(t, list(sizes(ctx)), dim=0)],
    )


# HF's module names of a ViT layer in transformers 5, and before (which YOLOS still uses).
NEW_NAMES = {
    "layer": "layers.{}.",
    "q": "attention.q_proj",
    "k": "attention.k_proj",
    "v": "attention.v_proj",
    "o": "attention.o_proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}
FORMER_NAMES = {
    "layer": "encoder.layer.{}.",
    "q": "attention.attention.query",
    "k": "attention.attention.key",
    "v": "attention.attention.value",
    "o": "attention.output.dense",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
}


def encoder_rows(base: str, names: dict = NEW_NAMES) -> list[tuple]:
    """The rows every ViT-style model shares (position table, patch projection, layers, final
    layer norm), HF names starting with ``base`` (``"vit."``, ``"deit."``, or ``""`` in a
    headless model) and the layer's modules named by ``names``."""
    hf_layer = base + names["layer"]
    qkv = tuple(hf_layer + names[part] for part in "qkv")
    return [
        ("transformer.position_embeddings.weight", base + "embeddings.position_embeddings", BATCH),
        *weight_bias("mixins.patch_embedding.proj", base + "embeddings.patch_embeddings.projection"),
        *weight_bias(_LAYER + "input_layernorm", hf_layer + "layernorm_before"),
        (_LAYER + "attention.query_key_value.weight", tuple(k + ".weight" for k in qkv), QKV),
        (_LAYER + "attention.query_key_value.bias", tuple(k + ".bias" for k in qkv), QKV),
        *weight_bias(_LAYER + "attention.dense", hf_layer + names["o"]),
        *weight_bias(_LAYER + "post_attention_layernorm", hf_layer + "layernorm_after"),
        *weight_bias(_LAYER + "mlp.dense_h_to_4h", hf_layer + names["fc1"]),
        *weight_bias(_LAYER + "mlp.dense_4h_to_h", hf_layer + names["fc2"]),
        *weight_bias("transformer.final_layernorm", base + "layernorm"),
    ]


def table(args) -> list[tuple]:
    """The classifier's rows (the base model under ``vit.``), or the headless model's (no
    prefix, with the pooler)."""
    base = "" if args.headless else "vit."
    head = (
        weight_bias("mixins.pooler.dense", "pooler.dense")
        if args.headless
        else weight_bias("mixins.cls.classifier", "classifier")
    )
    return [("transformer.word_embeddings.weight", base + "embeddings.cls_token", BATCH), *encoder_rows(base), *head]


# Former name -> transformers 5 name, applied in order (attention.output.dense before output.dense).
_RENAMES = tuple((FORMER_NAMES[part].replace("{}.", ""), NEW_NAMES[part].replace("{}.", "")) for part in NEW_NAMES)


def prepare_hf_state(state: dict, config) -> dict:
    renamed = {}
    for key, value in state.items():
        for old, new in _RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def encoder_args(config, name: str) -> dict:
    """The sat arguments of a ViT-style HF config (its ``hidden_act`` and ``qkv_bias`` checked)."""
    if config.hidden_act != "gelu":
        raise ValueError(f"{name} with hidden_act={config.hidden_act!r} is not supported (exact GELU only)")
    if not config.qkv_bias:
        raise ValueError(f"{name} with qkv_bias=False is not supported")
    image_size = config.image_size if isinstance(config.image_size, list | tuple) else [config.image_size] * 2
    return dict(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        inner_hidden_size=config.intermediate_size,
        layernorm_epsilon=config.layer_norm_eps,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        layernorm_order="pre",
        image_size=list(image_size),
        patch_size=config.patch_size,
        in_channels=config.num_channels,
        num_classes=config.num_labels,
    )


def config_to_args(config) -> dict:
    name = (config.architectures or [_CLASSIFIER])[0]
    if name not in (_CLASSIFIER, _HEADLESS):
        raise ValueError(f"{name} is not supported; sat translates {_CLASSIFIER} and {_HEADLESS}")
    return dict(**encoder_args(config, "ViT"), vocab_size=1, pre_len=1, post_len=0, headless=name == _HEADLESS)


def encoder_config(model, special: tuple[int, int, int], what: str) -> dict:
    """The HF config values of a ViT-style sat model, which must have ``special`` =
    ``(pre_len, post_len, vocab_size)`` (``what`` names them in the error), pre-LN and GELU."""
    t, prop = model.transformer, model.transformer.property
    if (prop.pre_len, prop.post_len, t.vocab_size) != special:
        pre, post, vocab = special
        raise ValueError(
            f"{type(model).__name__} converts to transformers only with {what}: "
            f"pre_len={pre}, post_len={post}, vocab_size={vocab}"
        )
    if t.layernorm_order != "pre" or t.layers[0].mlp.activation_func is not F.gelu:
        raise ValueError(f"{type(model).__name__} converts to transformers only pre-LN with exact GELU")
    height, width = prop.image_size
    return dict(
        num_hidden_layers=t.num_layers,
        hidden_size=t.hidden_size,
        num_attention_heads=t.num_attention_heads,
        intermediate_size=t.inner_hidden_size or 4 * t.hidden_size,
        hidden_act="gelu",
        layer_norm_eps=t.layernorm_epsilon,
        hidden_dropout_prob=t.layers[0].attention.output_dropout.p,
        attention_probs_dropout_prob=t.layers[0].attention.attention_dropout.p,
        image_size=height if height == width else [height, width],
        patch_size=prop.patch_size,
        num_channels=model.get_mixin("patch_embedding").proj.in_channels,
        qkv_bias=True,
    )


def model_to_config(model):
    from transformers import ViTConfig

    values = encoder_config(model, (1, 0, 1), "one [CLS] token")
    if "cls" not in model.mixins:
        return ViTConfig(**values, architectures=[_HEADLESS])
    return ViTConfig(**values, architectures=[_CLASSIFIER], num_labels=model.get_mixin("cls").classifier.out_features)


register_family(
    Family(
        name="vit",
        model_types=("vit",),
        sat_class="ViTModel",
        hf_class=lambda args: _HEADLESS if args.headless else _CLASSIFIER,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"hidden_size": args.hidden_size},
        prepare_hf_state=prepare_hf_state,
    )
)
