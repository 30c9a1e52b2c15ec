"""DeiT (``DeiTForImageClassificationWithTeacher``, ``DeiTForImageClassification`` and the
headless ``DeiTModel``) <-> sat ``DeiTModel``.

HF's ``cls_token`` and ``distillation_token`` are sat's two word-embedding rows (``pre_len=2``,
``vocab_size=2``); the encoder maps as ViT's (``sat.hf.families.vit``), former names included.
"""

from __future__ import annotations

from sat.hf.families.bert import weight_bias
from sat.hf.families.vit import encoder_args, encoder_config, encoder_rows, prepare_hf_state, tokens
from sat.hf.family import Family, register_family

# The two [1, 1, h] tokens stacked into the [2, h] word embeddings.
TOKENS = tokens(lambda ctx: [1, 1])
_TEACHER, _CLASSIFIER, _HEADLESS = "DeiTForImageClassificationWithTeacher", "DeiTForImageClassification", "DeiTModel"


def table(args) -> list[tuple]:
    """The rows of the base model (under ``deit.`` unless headless) and of its head."""
    base = "" if args.headless else "deit."
    tokens = (base + "embeddings.cls_token", base + "embeddings.distillation_token")
    if args.headless:
        head = weight_bias("mixins.pooler.dense", "pooler.dense")
    elif args.cls_only:
        head = weight_bias("mixins.cls.classifier", "classifier")
    else:
        head = [
            *weight_bias("mixins.cls.classifier", "cls_classifier"),
            *weight_bias("mixins.cls.distillation_classifier", "distillation_classifier"),
        ]
    return [("transformer.word_embeddings.weight", tokens, TOKENS), *encoder_rows(base), *head]


def config_to_args(config) -> dict:
    name = (config.architectures or [_TEACHER])[0]
    if name not in (_TEACHER, _CLASSIFIER, _HEADLESS):
        raise ValueError(f"{name} is not supported; sat translates {_TEACHER}, {_CLASSIFIER} and {_HEADLESS}")
    if name == _HEADLESS and (config.pooler_act != "tanh" or config.pooler_output_size != config.hidden_size):
        raise ValueError("DeiTModel's pooler is supported only with pooler_act='tanh', pooler_output_size=hidden_size")
    return dict(
        **encoder_args(config, "DeiT"),
        vocab_size=2,
        pre_len=2,
        post_len=0,
        headless=name == _HEADLESS,
        cls_only=name == _CLASSIFIER,
    )


def hf_class(args) -> str:
    return _HEADLESS if args.headless else _CLASSIFIER if args.cls_only else _TEACHER


def model_to_config(model):
    from transformers import DeiTConfig

    values = encoder_config(model, (2, 0, 2), "[CLS] and the distillation token")
    if "cls" not in model.mixins:
        return DeiTConfig(**values, architectures=[_HEADLESS])
    classes = model.get_mixin("cls").classifier.out_features
    name = _TEACHER if hasattr(model.get_mixin("cls"), "distillation_classifier") else _CLASSIFIER
    return DeiTConfig(**values, architectures=[name], num_labels=classes)


register_family(
    Family(
        name="deit",
        model_types=("deit",),
        sat_class="DeiTModel",
        hf_class=hf_class,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"hidden_size": args.hidden_size},
        prepare_hf_state=prepare_hf_state,
    )
)
