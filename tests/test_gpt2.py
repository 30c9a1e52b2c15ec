"""GPT2Model and the gpt2 family of sat.hf."""

from __future__ import annotations

import pytest
import torch
from model_checks import check_hf_round_trip, check_left_padded_batch, check_sat_model, check_unmatched_keys
from transformers import GPT2Config, GPT2LMHeadModel
from transformers import GPT2Model as HFGPT2Model

from sat.hf import from_hf, to_hf
from sat.model import AutoModel
from sat.model.official import GPT2Model

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(12).expand(2, 12)


def hf_config(**overrides) -> GPT2Config:
    values = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2Config(**{**values, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"n_inner": 48}])
def test_parity_with_transformers(tmp_path, overrides):
    hf = GPT2LMHeadModel(hf_config(**overrides))
    difference = check_hf_round_trip(
        hf, lambda m: m(IDS, POSITIONS, -1)[0], lambda h: h(IDS).logits, tmp_path, atol=1e-5
    )
    assert difference < 1e-5


def test_padded_batch_matches_transformers():
    check_left_padded_batch(GPT2LMHeadModel(hf_config()), IDS)


def test_headless_source_and_directory(tmp_path):
    base = HFGPT2Model(hf_config()).eval()
    base.save_pretrained(tmp_path / "base")
    model, args = AutoModel.from_pretrained(str(tmp_path / "base"))
    assert isinstance(model, GPT2Model) and args.num_layers == 2 and args.headless
    assert "gpt2-final" not in model.mixins
    with torch.no_grad():
        hidden = base(IDS).last_hidden_state
        assert (model(IDS, POSITIONS, -1)[0] - hidden).abs().max() < 1e-5  # no head: hidden states
        back = to_hf(model)
        assert type(back) is HFGPT2Model and (back(IDS).last_hidden_state - hidden).abs().max() < 1e-5


def test_untied_head_round_trips(tmp_path):
    hf = GPT2LMHeadModel(hf_config(tie_word_embeddings=False))
    with torch.no_grad():
        hf.lm_head.weight.normal_()
    check_hf_round_trip(hf, lambda m: m(IDS, POSITIONS, -1)[0], lambda h: h(IDS).logits, tmp_path)


def test_tied_source_gives_separate_parameters():
    """sat's GPT-2 has its own ``lm_head`` (as the original's): built from HF's tied embedding
    it must not share storage with the word embeddings, or an optimizer step would update the
    tensor twice."""
    model, _ = from_hf(GPT2LMHeadModel(hf_config()))
    head = model.get_mixin("gpt2-final").lm_head.weight
    embeddings = model.transformer.word_embeddings.weight
    assert torch.equal(head, embeddings) and head.data_ptr() != embeddings.data_ptr()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_tied_directory_gives_separate_parameters_in_every_dtype(tmp_path, dtype):
    """The saved directory holds the embedding only: sat's head takes its values, in the dtype
    loaded, on storage of its own."""
    hf = GPT2LMHeadModel(hf_config())
    hf.save_pretrained(tmp_path)
    model, _ = from_hf(str(tmp_path), dtype=dtype)
    head = model.get_mixin("gpt2-final").lm_head.weight
    embeddings = model.transformer.word_embeddings.weight
    expected = hf.transformer.wte.weight.detach().to(dtype or torch.float32)
    assert head.dtype == embeddings.dtype == expected.dtype
    assert torch.equal(head, expected) and torch.equal(embeddings, expected)
    assert head.untyped_storage().data_ptr() != embeddings.untyped_storage().data_ptr()


def test_conv1d_weights_are_used_in_place_and_train_save_reload(tmp_path):
    """Conv1D's ``[in, out]`` weights become sat's ``[out, in]`` parameters as transposed views
    (no copy); such a model trains like one with contiguous weights, decodes, saves and reloads."""
    hf = GPT2LMHeadModel(hf_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model, args = from_hf(hf)
    qkv = model.transformer.layers[0].attention.query_key_value.weight
    assert qkv.data_ptr() == hf.transformer.h[0].attn.c_attn.weight.data_ptr() and qkv.stride() == (1, 96)
    contiguous = GPT2Model(args)
    contiguous.load_state_dict(model.state_dict())
    assert contiguous.transformer.layers[0].attention.query_key_value.weight.is_contiguous()
    for m in (model, contiguous):
        optimizer = torch.optim.AdamW(m.parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            m(IDS, POSITIONS, -1)[0].logsumexp(-1).mean().backward()
            optimizer.step()
    with torch.no_grad():
        expected = model.eval()(IDS, POSITIONS, -1)[0]
        assert (expected - contiguous.eval()(IDS, POSITIONS, -1)[0]).abs().max() < 1e-5
        for batch in (1, 2):  # one-token inputs: the shapes of decoding
            got = model(IDS[:batch, :1], POSITIONS[:batch, :1], -1)[0]
            assert (got - expected[:batch, :1]).abs().max() < 1e-5
    check_sat_model(model, args, lambda m: m(IDS, POSITIONS, -1)[0], tmp_path)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = GPT2Model.get_args(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, hidden_dropout=0.0)
    model = GPT2Model(args)
    assert list(model.mixins) == ["gpt2-final"]
    assert model.get_mixin("gpt2-final").lm_head.weight.shape == (100, 32)
    check_sat_model(model, args, lambda m: m(IDS, POSITIONS, -1)[0], tmp_path)


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="activation 'relu' is not supported"):
        from_hf(GPT2LMHeadModel(hf_config(activation_function="relu")))
    check_unmatched_keys(
        GPT2LMHeadModel(hf_config()), "transformer.h.0.attn.extra.weight", "transformer.h.1.mlp.c_fc.bias"
    )
