"""DPRQuestionEncoder, DPRContextEncoder, DPRReader and the dpr family of sat.hf."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import DPRConfig

from sat.hf import from_hf, to_hf
from sat.model.official import DPRContextEncoder, DPRQuestionEncoder, DPRReader

GENERATOR = torch.Generator().manual_seed(0)
IDS = torch.randint(0, 100, (2, 12), generator=GENERATOR)
TYPES = torch.randint(0, 2, (2, 12), generator=GENERATOR)
POSITIONS = torch.arange(12).expand(2, 12)
ATTENTION = torch.ones(2, 12, dtype=torch.long)
ATTENTION[1, 9:] = 0  # the second row ends in padding
MASK = ATTENTION[:, None, None, :]  # [b, 1, 1, s], 1 = attend


def hf_config(**overrides) -> DPRConfig:
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return DPRConfig(**{**values, **overrides})


def hf_model(name: str, **overrides):
    return getattr(transformers, name)(hf_config(architectures=[name], **overrides))


def read(model) -> torch.Tensor:
    """The reader's three outputs as one tensor ``[b, 2 s + 1]``."""
    start, end, relevance = model(IDS, POSITIONS, MASK)[0]
    return torch.cat([start, end, relevance[:, None]], dim=1)


def hf_read(hf) -> torch.Tensor:
    out = hf(IDS, attention_mask=ATTENTION)
    return torch.cat([out.start_logits, out.end_logits, out.relevance_logits[:, None]], dim=1)


@pytest.mark.parametrize(("name", "projection_dim"), [("DPRQuestionEncoder", 0), ("DPRContextEncoder", 8)])
def test_encoder_pooled_output_parity(tmp_path, name, projection_dim):
    hf = hf_model(name, projection_dim=projection_dim)
    difference = check_hf_round_trip(
        hf,
        lambda m: m(IDS, POSITIONS, MASK, token_type_ids=TYPES)[0],
        lambda h: h(IDS, attention_mask=ATTENTION, token_type_ids=TYPES).pooler_output,
        tmp_path,
    )
    model, args = from_hf(hf)
    assert type(model).__name__ == name and args.projection_dim == projection_dim
    assert model(IDS, POSITIONS, MASK)[0].shape == (2, projection_dim or 32)
    print(f"{name} pooled output (projection_dim={projection_dim}): max abs difference {difference:.2e}")


def test_reader_logits_parity(tmp_path):
    difference = check_hf_round_trip(hf_model("DPRReader"), read, hf_read, tmp_path)
    model, _ = from_hf(hf_model("DPRReader"))
    start, end, relevance = model(IDS, POSITIONS, MASK)[0]
    assert start.shape == end.shape == (2, 12) and relevance.shape == (2,)
    print(f"DPRReader start/end/relevance logits: max abs difference {difference:.2e}")


@pytest.mark.parametrize("cls", [DPRQuestionEncoder, DPRContextEncoder, DPRReader])
def test_sat_models_train_save_and_reload(tmp_path, cls):
    args = cls.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=100,
        max_sequence_length=64,
        layernorm_order="post",
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = cls(args)
    assert list(model.mixins) == ["dpr-type", "dpr-final"]
    forward = read if cls is DPRReader else (lambda m: m(IDS, POSITIONS, MASK, token_type_ids=TYPES)[0])
    check_sat_model(model, args, forward, tmp_path)


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        from_hf(hf_model("DPRQuestionEncoder", hidden_act="relu"))
    with pytest.raises(ValueError, match="DPRReader with projection_dim=8 is not supported"):
        DPRReader(DPRReader.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, projection_dim=8))
    check_unmatched_keys(
        hf_model("DPRContextEncoder"), "ctx_encoder.extra", "ctx_encoder.bert_model.encoder.layer.1.output.dense.bias"
    )
    model, _ = from_hf(hf_model("DPRContextEncoder"))
    assert type(to_hf(model)).__name__ == "DPRContextEncoder"
