"""EncoderDecoderModel, T5Model and the t5 family of sat.hf."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from model_checks import (
    assert_recorded,
    check_hf_round_trip,
    check_sat_model,
    check_unmatched_keys,
    check_written_here_loads_in_original,
)
from transformers import T5Config, T5ForConditionalGeneration

from sat.generation import BaseStrategy, encoder_decoder_filling_sequence
from sat.hf import from_hf, to_hf
from sat.model import AutoModel, BaseModel
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin
from sat.model.encoder_decoder_model import EncoderDecoderModel
from sat.model.official import T5Model
from sat.model.official.t5_model import relative_position_bucket

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_t5_fixtures import t5_logits  # noqa: E402

_generator = torch.Generator().manual_seed(0)
ENC_IDS = torch.randint(2, 64, (2, 20), generator=_generator)
DEC_IDS = torch.randint(2, 64, (2, 24), generator=_generator)
ENC_PADDING = torch.ones(2, 20, dtype=torch.long)
ENC_PADDING[1, 14:] = 0  # the second source is 14 tokens long, padded on the right as T5's are
V1_0 = dict(feed_forward_proj="relu", tie_word_embeddings=True)
V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
TINY = dict(
    num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64, hidden_dropout=0.0, attention_dropout=0.0
)


def hf_t5(seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    values = dict(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,  # distances in these inputs reach the log buckets and beyond
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    hf = T5ForConditionalGeneration(T5Config(**{**values, **overrides})).eval()
    if not hf.config.scale_decoder_outputs:
        # v1.1 (transformers 5 ties its head to `shared`, unscaled): transformers draws `shared`
        # with std 1, giving logits near 30, where fp32 rounding alone (in transformers as in
        # sat) exceeds 1e-5. d_model ** -0.5 is the scale v1.0's head has.
        with torch.no_grad():
            hf.shared.weight.mul_(hf.config.d_model**-0.5)
    return hf


def sat_logits(model):
    return model(ENC_IDS, DEC_IDS, enc_attention_mask=ENC_PADDING[:, None, None, :])[1]


def hf_logits(hf):
    return hf(input_ids=ENC_IDS, attention_mask=ENC_PADDING, decoder_input_ids=DEC_IDS).logits


@pytest.mark.parametrize(
    "overrides",
    [
        V1_0,
        V1_1,
        {**V1_0, "num_decoder_layers": 3},  # encoder and decoder of different depths
        {**V1_1, "d_kv": 16},  # heads wider than d_model / num_heads
    ],
    ids=["v1.0", "v1.1", "v1.0-3-decoder-layers", "v1.1-d_kv"],
)
def test_parity_with_transformers(tmp_path, overrides):
    """Padded sources, causal decoder: logits equal transformers', the way back gives the
    identical state dict and save_hf's directory loads in transformers."""
    difference = check_hf_round_trip(hf_t5(**overrides), sat_logits, hf_logits, tmp_path, atol=1e-5)
    assert difference < 1e-5


@pytest.mark.parametrize("overrides", [V1_0, V1_1], ids=["v1.0", "v1.1"])
def test_encoder_hidden_states_match_transformers(overrides):
    hf = hf_t5(**overrides)
    model, _ = from_hf(hf)
    with torch.no_grad():
        expected = hf.encoder(input_ids=ENC_IDS, attention_mask=ENC_PADDING).last_hidden_state
        hidden = model.encode(ENC_IDS, ENC_PADDING[:, None, None, :])
        assert torch.equal(model(ENC_IDS, DEC_IDS, enc_attention_mask=ENC_PADDING[:, None, None, :])[0], hidden)
    assert (hidden - expected).abs().max() < 1e-5


def test_translated_configuration():
    model, args = from_hf(hf_t5(**V1_1, num_decoder_layers=3, d_kv=16))
    enc, dec = model.encoder.transformer, model.decoder.transformer
    assert (enc.num_layers, dec.num_layers, args.dec_num_layers) == (2, 3, 3)
    assert (enc.hidden_size_per_attention_head, dec.hidden_size_per_attention_head, enc.inner_hidden_size) == (
        16,
        16,
        48,
    )
    assert enc.is_gated_mlp and not enc.use_bias and dec.is_decoder and not enc.is_decoder
    assert dec.word_embeddings is enc.word_embeddings  # one shared embedding
    head = model.decoder.get_mixin("t5-final").lm_head.weight
    assert head.shape == (64, 32) and head.data_ptr() != enc.word_embeddings.weight.data_ptr()  # not aliased
    attention = model.decoder.get_mixin("t5-attention")
    assert (attention.relative_attention_num_buckets, attention.relative_attention_max_distance) == (8, 16)
    assert attention.is_decoder and not model.encoder.get_mixin("t5-attention").is_decoder
    config = to_hf(model).config
    assert (config.num_decoder_layers, config.d_kv, config.feed_forward_proj) == (3, 16, "gated-gelu")


def test_v1_1_directory_loads_with_an_own_head(tmp_path):
    """transformers 5 saves v1.1 with the head tied to `shared`: sat's lm_head starts as an equal
    tensor with a storage of its own."""
    hf = hf_t5(**V1_1)
    hf.save_pretrained(tmp_path)
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    head = model.decoder.get_mixin("t5-final").lm_head.weight
    embedding = model.encoder.transformer.word_embeddings.weight
    assert torch.equal(head, embedding) and head.data_ptr() != embedding.data_ptr()
    with torch.no_grad():
        assert (sat_logits(model) - hf_logits(hf)).abs().max() < 1e-5


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    distances = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        expected = T5Attention._relative_position_bucket(distances, bidirectional, 32, 128)
        assert torch.equal(relative_position_bucket(distances, bidirectional, 32, 128), expected)


NEW_TOKENS = 64


@pytest.mark.parametrize(
    "overrides", [V1_0, V1_1, {**V1_1, "num_decoder_layers": 3}], ids=["v1.0", "v1.1", "v1.1-3-decoder-layers"]
)
def test_cached_greedy_generation_equals_uncached_loop_and_transformers(overrides):
    """Encoder once, decoder cached (cross-attention keys/values from the first step reused):
    the tokens of a greedy loop of full, uncached forwards, and of transformers' generate."""
    hf = hf_t5(**overrides)
    # transformers 5.23's generate fails (IndexError in its cache) when the stacks' depths differ
    compare_with_transformers = hf.config.num_decoder_layers == hf.config.num_layers
    model, _ = from_hf(hf)
    source, padding = ENC_IDS[1:], ENC_PADDING[1:]  # a padded source
    mask = padding[:, None, None, :]
    uncached = torch.zeros(1, 1, dtype=torch.long)  # decoder_start_token_id
    with torch.no_grad():
        encoder_outputs = model.encode(source, mask)
        for _ in range(NEW_TOKENS):  # full decoder forwards over every token so far
            logits = model.decode(uncached, encoder_outputs=encoder_outputs, cross_attention_mask=mask)[0]
            uncached = torch.cat((uncached, logits[:, -1:].argmax(-1)), dim=1)
        if compare_with_transformers:
            reference = hf.generate(
                input_ids=source, attention_mask=padding, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
            )
    model.decoder.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    projections = []  # cross-attention key/value projections run
    for layer in model.decoder.transformer.layers:
        layer.cross_attention.key_value.register_forward_hook(lambda *_: projections.append(1))
    seq = torch.tensor([0] + [-1] * NEW_TOKENS)
    tokens, mems = encoder_decoder_filling_sequence(
        model, source, seq, 1, BaseStrategy(top_k=1), enc_attention_mask=mask
    )
    assert mems.length == NEW_TOKENS  # the decoder ran cached, one position per step
    assert len(projections) == len(model.decoder.transformer.layers)  # once, at the first step
    assert torch.equal(tokens, uncached)
    assert not compare_with_transformers or torch.equal(tokens, reference)


def test_encoder_decoder_generation_takes_one_source():
    model, _ = from_hf(hf_t5(**V1_0))
    with pytest.raises(ValueError, match=r"one source \[1, s_enc\]"):
        encoder_decoder_filling_sequence(model, ENC_IDS, torch.tensor([0, -1]), 1)


V1_1_FLAGS = dict(gated_gelu_mlp=True, no_share_embeddings=True, dec_num_layers=3)


# The second: T5's d_kv and d_ff, which model_config.json records from args (no backbone of its own)
@pytest.mark.parametrize("flags", [{}, dict(V1_1_FLAGS, hidden_size_per_attention_head=16, inner_hidden_size=48)])
def test_sat_model_trains_saves_and_reloads(tmp_path, flags):
    args = T5Model.get_args(**TINY, relative_attention_num_buckets=8, **flags)
    model = T5Model(args)
    assert list(model.encoder.mixins) == ["final", "t5-attention", "t5-position"]
    assert list(model.decoder.mixins) == ["t5-attention", "t5-position", "t5-final"]
    assert model.decoder.transformer.num_layers == flags.get("dec_num_layers", 2)
    assert "position_embeddings" not in dict(model.encoder.transformer.named_children())
    # T5's init: std 0.02 / sqrt(fan in); queries also / sqrt(head size), as transformers'
    qkv = model.encoder.transformer.layers[0].attention.query_key_value.weight
    inner, head = qkv.shape[0] // 3, flags.get("hidden_size_per_attention_head", 8)
    assert 0.8 < qkv[inner:].std() / (0.02 * 32**-0.5) < 1.2
    assert 0.8 < qkv[:inner].std() / (0.02 * (32 * head) ** -0.5) < 1.2
    check_sat_model(model, args, sat_logits, tmp_path)
    loaded, _ = AutoModel.from_pretrained(args.save)
    assert loaded.decoder.transformer.word_embeddings is loaded.encoder.transformer.word_embeddings
    for name in ("hidden_size_per_attention_head", "inner_hidden_size"):
        assert getattr(loaded.decoder.transformer, name) == getattr(model.decoder.transformer, name)


@pytest.mark.parametrize("layout", ["t5", "t5_v1_1"])
def test_checkpoints_of_the_original_load_with_identical_outputs(layout):
    """v1.0, and v1.1 with the original's ``gated-mlp`` mixin layout, written by the original,
    load here (from_pretrained and plain load_state_dict) and compute what it computed."""
    folder = os.path.join(FIXTURES, "written_by_original", layout)
    model, _ = AutoModel.from_pretrained(folder)
    assert isinstance(model, T5Model)
    logits = t5_logits(model)
    assert_recorded(logits, os.path.join(folder, "logits_by_original.pt"))
    old = torch.load(os.path.join(folder, "1", "mp_rank_00_model_states.pt"), weights_only=True)["module"]
    if layout == "t5_v1_1":
        assert "decoder.mixins.gated-mlp.gated_h_to_4h_list.1.weight" in old
    rebuilt, _ = AutoModel.from_pretrained(folder, build_only=True)
    rebuilt.load_state_dict(old, strict=True)  # real weights: torch's own path
    for kind, value in t5_logits(rebuilt).items():
        assert torch.equal(value, logits[kind])


def test_checkpoint_written_here_loads_in_original(tmp_path):
    check_written_here_loads_in_original(os.path.join(FIXTURES, "written_by_ours", "t5"), t5_logits, tmp_path)


def test_encoder_decoder_model_applies_decoder_args_and_reloads(tmp_path):
    args = EncoderDecoderModel.get_args(
        **TINY,
        max_sequence_length=32,
        dec_num_layers=1,
        dec_inner_hidden_size=40,
        dec_layernorm_order="post",
    )
    model = EncoderDecoderModel(args)
    dec = model.decoder.transformer
    assert (dec.num_layers, dec.inner_hidden_size, dec.layernorm_order) == (1, 40, "post")
    assert dec.is_decoder and dec.word_embeddings is model.encoder.transformer.word_embeddings
    positions = torch.arange(20).expand(2, 20)
    dec_positions = torch.arange(24).expand(2, 24)

    def logits(m):
        return m(ENC_IDS, positions, DEC_IDS, dec_positions)[1]

    check_sat_model(model, args, logits, tmp_path)
    for loaded, _ in (
        EncoderDecoderModel.from_pretrained(args.save),
        EncoderDecoderModel.from_pretrained(args, args.save),  # the original's order
    ):
        assert type(loaded) is EncoderDecoderModel and loaded.decoder.transformer.num_layers == 1
        with torch.no_grad():
            assert torch.equal(logits(loaded.eval()), logits(model.eval()))


def test_encoder_decoder_model_checks_its_parts():
    args = BaseModel.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=64)
    with pytest.raises(TypeError, match="expects BaseModel encoder/decoder, got Linear"):
        EncoderDecoderModel(args, decoder=torch.nn.Linear(2, 2))
    small = BaseModel(BaseModel.get_args(num_layers=1, hidden_size=16, num_attention_heads=4, vocab_size=64))
    with pytest.raises(ValueError, match="tie_word_embeddings needs equal embedding shapes"):
        EncoderDecoderModel(args, decoder=small)


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="feed_forward_proj='gated-silu' is not supported"):
        from_hf(hf_t5(feed_forward_proj="gated-silu"))
    args = T5Model.get_args(**TINY, dec_inner_hidden_size=40)
    with pytest.raises(ValueError, match=r"decoder differs in \['inner_hidden_size'\]"):
        to_hf(T5Model(args))
    check_unmatched_keys(
        hf_t5(**V1_1),
        "encoder.block.1.layer.0.SelfAttention.extra.weight",
        "decoder.block.0.layer.1.EncDecAttention.k.weight",
    )


def test_forward_takes_the_finetune_scripts_position_ids():
    # The original's examples/t5/finetune_t5.py calls the model with every input by keyword.
    model, _ = from_hf(hf_t5(**V1_0))
    enc_positions, dec_positions = torch.arange(20).expand(2, 20), torch.arange(24).expand(2, 24)
    with torch.no_grad():
        _, logits, *_ = model(
            enc_input_ids=ENC_IDS, dec_input_ids=DEC_IDS, enc_position_ids=enc_positions, dec_position_ids=dec_positions
        )
        assert torch.equal(logits, model(ENC_IDS, DEC_IDS)[1])


def test_encoder_decoder_model_forward_takes_position_ids_by_keyword():
    model = EncoderDecoderModel(EncoderDecoderModel.get_args(**TINY, max_sequence_length=32)).eval()
    positions, dec_positions = torch.arange(20).expand(2, 20), torch.arange(24).expand(2, 24)
    with torch.no_grad():
        by_keyword = model(
            enc_input_ids=ENC_IDS, dec_input_ids=DEC_IDS, enc_position_ids=positions, dec_position_ids=dec_positions
        )[1]
        assert by_keyword.shape == (2, 24, TINY["vocab_size"])
        assert torch.equal(by_keyword, model(ENC_IDS, positions, DEC_IDS, dec_positions)[1])
