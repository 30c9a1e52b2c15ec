"""RobertaModel and the roberta family of sat.hf: HF's position offset and its single token type."""

from __future__ import annotations

import pytest
import torch
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import RobertaConfig, RobertaForMaskedLM
from transformers import RobertaModel as HFRobertaModel

from sat.hf import from_hf, to_hf
from sat.model import AutoModel
from sat.model.official import RobertaModel
from sat.model.official.roberta_model import roberta_position_ids

IDS = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
IDS[1, 9:] = 1  # padding (pad_token_id 1) at the end of the second row
ATTENTION = IDS.ne(1).long()
MASK = ATTENTION[:, None, None, :]  # [b, 1, 1, s], 1 = attend


def hf_config(**overrides) -> RobertaConfig:
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=66,  # HF RoBERTa needs positions up to seq + 2
        type_vocab_size=1,
    )
    return RobertaConfig(**{**values, **overrides})


def sat_forward(model):
    return model(IDS, roberta_position_ids(IDS), MASK)[0]


def hf_forward(hf):
    out = hf(IDS, attention_mask=ATTENTION)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_position_ids_follow_hf():
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    expected = RobertaEmbeddings.create_position_ids_from_input_ids(IDS, padding_idx=1)
    assert torch.equal(roberta_position_ids(IDS), expected)
    assert roberta_position_ids(IDS)[1].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1, 1]


@pytest.mark.parametrize("cls", [RobertaForMaskedLM, HFRobertaModel])
def test_parity_and_round_trip(tmp_path, cls):
    hf = cls(hf_config())
    with torch.no_grad():  # a visible single token type, so a model that dropped it would fail
        hf.base_model.embeddings.token_type_embeddings.weight.normal_()
    difference = check_hf_round_trip(hf, sat_forward, hf_forward, tmp_path)
    print(f"roberta {cls.__name__}: max abs difference {difference:.2e}")
    model, args = from_hf(hf)
    assert args.use_token_types and args.max_sequence_length == 66
    assert model.transformer.position_embeddings.weight.shape == (66, 32)  # HF's whole table
    assert "bert-type" in model.mixins


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = RobertaModel.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=100,
        max_sequence_length=66,
        layernorm_order="post",
        hidden_dropout=0.0,
    )
    model = RobertaModel(args)
    assert list(model.mixins) == ["bert-final"]  # no token types, as the original library
    check_sat_model(model, args, sat_forward, tmp_path)
    with pytest.raises(ValueError, match="without token types"):
        to_hf(model)


def test_converted_model_reloads_with_its_token_types(tmp_path):
    model, args = from_hf(RobertaForMaskedLM(hf_config()))
    check_sat_model(model, args, sat_forward, tmp_path)
    loaded, loaded_args = AutoModel.from_pretrained(args.save)
    assert loaded_args.use_token_types and "bert-type" in loaded.mixins
    assert type(to_hf(loaded)) is RobertaForMaskedLM


def test_unsupported_pad_token_and_unmatched_keys():
    with pytest.raises(ValueError, match="pad_token_id=0 is not supported"):
        from_hf(RobertaForMaskedLM(hf_config(pad_token_id=0, bos_token_id=2, eos_token_id=2)))
    check_unmatched_keys(
        RobertaForMaskedLM(hf_config()), "lm_head.extra", "roberta.encoder.layer.0.attention.self.key.bias"
    )
