"""YOLOS (``YolosForObjectDetection``) <-> sat ``YOLOS``.

HF's ``cls_token`` and ``detection_tokens`` are sat's word embeddings (``[CLS]`` then the
detection tokens), the class and box heads are ``det_head``'s ``class_embed`` and
``bbox_embed``, the encoder maps as ViT's (``sat.hf.families.vit``) under the names ViT had
before transformers 5, which YOLOS still uses.
"""

from __future__ import annotations

from sat.hf.families.bert import weight_bias
from sat.hf.families.vit import FORMER_NAMES, encoder_args, encoder_config, encoder_rows, tokens
from sat.hf.family import Family, register_family

_BASE, _DETECTOR = "vit.", "YolosForObjectDetection"
# [CLS] [1, 1, h] and the detection tokens [1, n, h] stacked into the [1 + n, h] word embeddings.
TOKENS = tokens(lambda ctx: [1, ctx["num_det_tokens"]])


def table(args) -> list[tuple]:
    hf_tokens = (_BASE + "embeddings.cls_token", _BASE + "embeddings.detection_tokens")
    heads = []
    for i in range(3):
        heads += weight_bias(f"mixins.det_head.class_embed.layers.{i}", f"class_labels_classifier.layers.{i}")
        heads += weight_bias(f"mixins.det_head.bbox_embed.layers.{i}", f"bbox_predictor.layers.{i}")
    return [("transformer.word_embeddings.weight", hf_tokens, TOKENS), *encoder_rows(_BASE, FORMER_NAMES), *heads]


def config_to_args(config) -> dict:
    name = (config.architectures or [_DETECTOR])[0]
    if name != _DETECTOR:
        raise ValueError(f"{name} is not supported; sat translates {_DETECTOR}")
    if config.use_mid_position_embeddings:
        raise ValueError("YOLOS with use_mid_position_embeddings=True is not supported (sat's YOLOS has none)")
    tokens = config.num_detection_tokens
    values = encoder_args(config, "YOLOS")
    return dict(
        **values,
        vocab_size=1 + tokens,
        pre_len=1,
        post_len=tokens,
        num_det_tokens=tokens,
        num_det_classes=config.num_labels + 1,  # the last one is "no object"
    )


def model_to_config(model):
    from transformers import YolosConfig

    head = model.get_mixin("det_head")
    values = encoder_config(model, (1, head.num_det_tokens, 1 + head.num_det_tokens), "[CLS] and the detection tokens")
    return YolosConfig(
        **{**values, "image_size": list(model.transformer.property.image_size)},
        num_detection_tokens=head.num_det_tokens,
        num_labels=head.class_embed.layers[-1].out_features - 1,
        use_mid_position_embeddings=False,
        architectures=[_DETECTOR],
    )


register_family(
    Family(
        name="yolos",
        model_types=("yolos",),
        sat_class="YOLOS",
        hf_class=_DETECTOR,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"hidden_size": args.hidden_size, "num_det_tokens": args.num_det_tokens},
    )
)
