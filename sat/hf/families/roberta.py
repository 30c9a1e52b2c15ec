"""RoBERTa (``RobertaForMaskedLM``, and the headless ``RobertaModel``) <-> sat ``RobertaModel``.

The encoder is BERT's (``sat.hf.families.bert``). Two RoBERTa details:

- Positions: HF numbers them from ``pad_token_id + 1`` and its table keeps the rows before.
  sat keeps the whole table unchanged (``max_sequence_length = max_position_embeddings``), so
  the state dict round-trips exactly and the caller passes HF's position ids
  (``sat.model.official.roberta_model.roberta_position_ids``).
- Token types: HF adds a token-type embedding (one type) to every token. The converted model
  keeps it as ``bert-type`` (``use_token_types=True``), whose ids default to zeros as in HF.
"""

from __future__ import annotations

from sat.hf.families.bert import IGNORE_HF, encoder_args, encoder_config, encoder_map, fill_tied, is_headless
from sat.hf.family import Family, register_family


def config_to_args(config) -> dict:
    if config.pad_token_id != 1:
        raise ValueError(
            f"RoBERTa with pad_token_id={config.pad_token_id} is not supported: sat's roberta_position_ids "
            "and to_hf follow HF's pad_token_id=1 (positions from 2)"
        )
    headless = is_headless(config, "RobertaModel", "RobertaForMaskedLM")
    return {**encoder_args(config, headless), "use_token_types": True}


def model_to_config(model):
    from transformers import RobertaConfig

    if "bert-type" not in model.mixins:
        raise ValueError(
            "RobertaModel without token types (the original library's layout) has no transformers counterpart: "
            "HF's RoBERTa always adds a token-type embedding; build it with use_token_types=True"
        )
    types = model.get_mixin("bert-type").type_embeddings.num_embeddings
    return encoder_config(model, RobertaConfig, "RobertaForMaskedLM", "RobertaModel", type_vocab_size=types)


register_family(
    Family(
        name="roberta",
        model_types=("roberta",),
        sat_class="RobertaModel",
        hf_class=lambda args: "RobertaModel" if args.headless else "RobertaForMaskedLM",
        table=encoder_map("roberta.", ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias")),
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {"hidden_size": args.hidden_size},
        prepare_hf_state=lambda state, config: fill_tied(
            state, config, "lm_head.decoder", "lm_head.bias", "roberta.embeddings.word_embeddings.weight"
        ),
        ignore_hf=IGNORE_HF,
    )
)
