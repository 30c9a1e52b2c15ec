"""CLIP (``CLIPModel``) <-> sat ``CLIP``.

HF's class embedding is the image tower's one-row word embedding (``pre_len=1``,
``vocab_size=1``); ``pre_layrnorm`` (HF's spelling) is ``image_enc.pre_layernorm``;
``post_layernorm`` and ``final_layer_norm`` are the towers' final layer norms. The towers may
differ in layer count, so the map is built per tower (``CLIPFamily.state_map``). HF pools the
text at the first ``eos_token_id``, or, for the old configs whose ``eos_token_id`` is 2, at the
highest id: sat's ``text_eos_token_id`` (``-1`` for the latter).
"""

from __future__ import annotations

from dataclasses import dataclass

from sat.hf.families.bert import weight_bias
from sat.hf.family import Family, register_family
from sat.hf.mapping import StateDictMap, Transform, concat
from sat.model.official.clip_model import HIGHEST_ID, quick_gelu

_CLASS = "CLIPModel"
_LEGACY_EOS = 2  # transformers: eos_token_id 2 means "pool at the highest id"
# HF's class embedding is a vector; sat's [CLS] a one-row embedding table.
ROW = Transform("row", lambda ts, ctx: ts[0].unsqueeze(0), lambda t, ctx: [t.squeeze(0)])


def qkv(tower: str) -> Transform:
    return concat(lambda ctx: [ctx[tower]] * 3, f"{tower} qkv")


def layer_rows(sat: str, hf: str, tower: str) -> list[tuple]:
    """One tower's layer rows, ``{}`` being the layer index."""
    sat, hf = sat + "transformer.layers.{}.", hf + "encoder.layers.{}."
    q_k_v = tuple(f"{hf}self_attn.{name}_proj" for name in "qkv")
    return [
        *weight_bias(sat + "input_layernorm", hf + "layer_norm1"),
        (sat + "attention.query_key_value.weight", tuple(k + ".weight" for k in q_k_v), qkv(tower)),
        (sat + "attention.query_key_value.bias", tuple(k + ".bias" for k in q_k_v), qkv(tower)),
        *weight_bias(sat + "attention.dense", hf + "self_attn.out_proj"),
        *weight_bias(sat + "post_attention_layernorm", hf + "layer_norm2"),
        *weight_bias(sat + "mlp.dense_h_to_4h", hf + "mlp.fc1"),
        *weight_bias(sat + "mlp.dense_4h_to_h", hf + "mlp.fc2"),
    ]


IMAGE, TEXT = "image_encoder.", "text_encoder."
OTHER_ROWS = [
    (IMAGE + "transformer.word_embeddings.weight", "vision_model.embeddings.class_embedding", ROW),
    (IMAGE + "transformer.position_embeddings.weight", "vision_model.embeddings.position_embedding.weight"),
    (IMAGE + "mixins.patch_embedding.proj.weight", "vision_model.embeddings.patch_embedding.weight"),
    *weight_bias(IMAGE + "mixins.image_enc.pre_layernorm", "vision_model.pre_layrnorm"),
    *weight_bias(IMAGE + "transformer.final_layernorm", "vision_model.post_layernorm"),
    (IMAGE + "mixins.image_enc.visual_projection.weight", "visual_projection.weight"),
    (TEXT + "transformer.word_embeddings.weight", "text_model.embeddings.token_embedding.weight"),
    (TEXT + "transformer.position_embeddings.weight", "text_model.embeddings.position_embedding.weight"),
    *weight_bias(TEXT + "transformer.final_layernorm", "text_model.final_layer_norm"),
    (TEXT + "mixins.text_enc.text_projection.weight", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
]


@dataclass(frozen=True)
class CLIPFamily(Family):
    """A family whose towers have layer counts of their own."""

    def state_map(self, args) -> StateDictMap:
        parts = [
            StateDictMap.build(layer_rows(IMAGE, "vision_model.", "image"), args.num_layers),
            StateDictMap.build(layer_rows(TEXT, "text_model.", "text"), args.text_num_layers),
            StateDictMap.build(OTHER_ROWS, 0),
        ]
        return StateDictMap([entry for part in parts for entry in part.entries], self.ignore_hf)


def _check_towers(vision, text) -> None:
    for tower in (vision, text):
        if tower.hidden_act != "quick_gelu":
            raise ValueError(f"CLIP with hidden_act={tower.hidden_act!r} is not supported (quick_gelu only)")
    for name in ("layer_norm_eps", "attention_dropout"):
        if getattr(vision, name) != getattr(text, name):
            raise ValueError(f"CLIP whose towers differ in {name} is not supported (sat's CLIP has one {name})")
    if not isinstance(vision.image_size, int):
        raise ValueError(f"CLIP with image_size={vision.image_size!r} is not supported (one side length only)")


def config_to_args(config) -> dict:
    name = (config.architectures or [_CLASS])[0]
    if name != _CLASS:
        raise ValueError(f"{name} is not supported; sat translates {_CLASS}")
    vision, text = config.vision_config, config.text_config
    _check_towers(vision, text)
    return dict(
        num_layers=vision.num_hidden_layers,
        hidden_size=vision.hidden_size,
        num_attention_heads=vision.num_attention_heads,
        inner_hidden_size=vision.intermediate_size,
        vocab_size=1,
        layernorm_epsilon=vision.layer_norm_eps,
        hidden_dropout=0.0,  # CLIP drops out attention probabilities only
        attention_dropout=vision.attention_dropout,
        layernorm_order="pre",
        image_size=[vision.image_size] * 2,
        patch_size=vision.patch_size,
        pre_len=1,
        post_len=0,
        in_channels=vision.num_channels,
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
        text_vocab_size=text.vocab_size,
        text_num_layers=text.num_hidden_layers,
        text_hidden_size=text.hidden_size,
        text_num_attention_heads=text.num_attention_heads,
        text_inner_hidden_size=text.intermediate_size,
        text_max_sequence_length=text.max_position_embeddings,
        text_eos_token_id=HIGHEST_ID if text.eos_token_id == _LEGACY_EOS else text.eos_token_id,
    )


def _check_model(model) -> None:
    image, text = model.image_encoder.transformer, model.text_encoder.transformer
    prop = image.property
    if (prop.pre_len, prop.post_len, image.vocab_size) != (1, 0, 1) or prop.image_size[0] != prop.image_size[1]:
        raise ValueError(
            "CLIP converts to transformers only with one [CLS] token (pre_len=1, post_len=0, vocab_size=1) "
            "and square images"
        )
    for tower in (image, text):
        if tower.layernorm_order != "pre" or tower.layers[0].mlp.activation_func is not quick_gelu:
            raise ValueError("CLIP converts to transformers only pre-LN towers with QuickGELU")
        if tower.hidden_size_per_attention_head not in (None, tower.hidden_size // tower.num_attention_heads):
            raise ValueError("CLIP converts to transformers only with head size hidden_size / num_attention_heads")
    if model.text_encoder.eos_token_id is None:
        raise ValueError(
            "CLIP with text_eos_token_id unset (pooling the last token) has no transformers equivalent; "
            "set text_eos_token_id"
        )


def model_to_config(model):
    from transformers import CLIPConfig

    _check_model(model)
    image, text = model.image_encoder.transformer, model.text_encoder.transformer
    eos = model.text_encoder.eos_token_id
    common = dict(
        hidden_act="quick_gelu",
        layer_norm_eps=image.layernorm_epsilon,
        attention_dropout=image.layers[0].attention.attention_dropout.p,
    )

    def tower(t) -> dict:
        return dict(
            num_hidden_layers=t.num_layers,
            hidden_size=t.hidden_size,
            num_attention_heads=t.num_attention_heads,
            intermediate_size=t.inner_hidden_size or 4 * t.hidden_size,
            **common,
        )

    return CLIPConfig(
        vision_config=dict(
            **tower(image),
            image_size=image.property.image_size[0],
            patch_size=image.property.patch_size,
            num_channels=model.image_encoder.get_mixin("patch_embedding").proj.in_channels,
        ),
        text_config=dict(
            **tower(text),
            vocab_size=text.vocab_size,
            max_position_embeddings=text.max_sequence_length,
            eos_token_id=_LEGACY_EOS if eos == HIGHEST_ID else eos,
        ),
        projection_dim=model.image_encoder.get_mixin("image_enc").visual_projection.out_features,
        logit_scale_init_value=model.logit_scale_init_value,
    )


register_family(
    CLIPFamily(
        name="clip",
        model_types=("clip",),
        sat_class="CLIP",
        hf_class=_CLASS,
        table=(),
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"image": args.hidden_size, "text": args.text_hidden_size},
        ignore_hf=(r"(text|vision)_model\.embeddings\.position_ids",),  # buffers older files saved
    )
)
