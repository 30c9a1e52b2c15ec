"""DPR (``DPRQuestionEncoder``, ``DPRContextEncoder``, ``DPRReader``) <-> the sat classes of
the same names.

One HF model type (``dpr``) for three architectures: ``config.architectures`` names the class,
and the sat class built is the one of that name. Each wraps a headless BERT (``bert_model``,
no pooler) under its own prefix; the BERT rows are ``sat.hf.families.bert``'s, the token types
under the original's mixin name ``dpr-type``.
"""

from __future__ import annotations

from sat.hf.families.bert import encoder_args, encoder_config, encoder_table, weight_bias
from sat.hf.family import Family, register_family

_PREFIXES = {
    "DPRQuestionEncoder": "question_encoder.",
    "DPRContextEncoder": "ctx_encoder.",
    "DPRReader": "span_predictor.encoder.",
}
_HEAD = "mixins.dpr-final."


def _architecture(config) -> str:
    name = (config.architectures or [None])[0]
    if name not in _PREFIXES:
        raise ValueError(f"DPR architecture {name!r} is not supported; sat translates {sorted(_PREFIXES)}")
    return name


def table(args) -> list[tuple]:
    encoder = _PREFIXES[args.dpr_class]
    rows = [
        (sat.replace("mixins.bert-type.", "mixins.dpr-type."), *rest)
        for sat, *rest in encoder_table(encoder + "bert_model.", args.num_layers)
    ]
    if args.dpr_class == "DPRReader":
        return (
            rows
            + weight_bias(_HEAD + "qa_outputs", "span_predictor.qa_outputs")
            + weight_bias(_HEAD + "qa_classifier", "span_predictor.qa_classifier")
        )
    if args.projection_dim > 0:
        rows += weight_bias(_HEAD + "encode_proj", encoder + "encode_proj")
    return rows


def config_to_args(config) -> dict:
    name = _architecture(config)
    values = encoder_args(config, name, name)
    del values["headless"]  # always headless: the head is the class's own
    # dpr_class is no model argument (the class is): it tells the map which class's names to use.
    return dict(**values, projection_dim=config.projection_dim, dpr_class=name)


def model_to_config(model):
    config = encoder_config(model, "DPRConfig", type(model).__name__, type(model).__name__, type_mixin="dpr-type")
    proj = getattr(model.get_mixin("dpr-final"), "encode_proj", None)
    config.projection_dim = 0 if proj is None else proj.out_features
    return config


register_family(
    Family(
        name="dpr",
        model_types=("dpr",),
        sat_class=_architecture,
        sat_classes=tuple(_PREFIXES),
        hf_class=lambda args: args.dpr_class,
        table=table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"hidden_size": args.hidden_size},
        ignore_hf=(r".*embeddings\.(position_ids|token_type_ids)",),
    )
)
