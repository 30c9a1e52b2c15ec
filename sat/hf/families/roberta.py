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

from sat.hf.families.bert import encoder_args, encoder_family
from sat.hf.family import register_family


def config_to_args(config) -> dict:
    if config.pad_token_id != 1:
        raise ValueError(
            f"RoBERTa with pad_token_id={config.pad_token_id} is not supported: sat's roberta_position_ids "
            "and to_hf follow HF's pad_token_id=1 (positions from 2)"
        )
    return {**encoder_args(config, "RobertaForMaskedLM", "RobertaModel"), "use_token_types": True}


register_family(
    encoder_family(
        "roberta",
        "RobertaModel",
        ("RobertaConfig", "RobertaForMaskedLM", "RobertaModel"),
        "roberta.",
        ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias"),
        config_to_args,
    )
)
