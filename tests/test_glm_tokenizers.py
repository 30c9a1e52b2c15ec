"""The GLM tokenizers: the original's command-token layout after the text vocabulary, encoding
split on command tokens, decoding, file resolution (local paths, the HF cache, cog-pretrain.model)
and get_tokenizer's glm_* types."""

from __future__ import annotations

import argparse
import shutil

import pytest
from test_tokenization import sentencepiece_model
from tiny_vocabs import GPT2_SYMBOLS, cache_as_hub_repo, write_gpt2_vocab, write_wordpiece_vocab

import sat.tokenization
from sat.tokenization import get_tokenizer
from sat.tokenization.glm import BertWordPieceTokenizer, ChineseSPTokenizer, GPT2BPETokenizer, Tokenization


@pytest.fixture(autouse=True)
def _fresh_cache():
    sat.tokenization._current.clear()
    yield
    sat.tokenization._current.clear()


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


def _ids(tokenizer, names: str) -> list[int]:
    return [tokenizer.get_command(name).Id for name in names.split()]


def test_gpt2_bpe_layout_encoding_and_decoding(tmp_path):
    tokenizer = GPT2BPETokenizer(write_gpt2_vocab(tmp_path / "gpt2"), add_block_symbols=True, add_task_mask=True)
    assert tokenizer.num_text_tokens == 24 and len(tokenizer) == tokenizer.num_tokens == 32
    assert _ids(tokenizer, "pad eos sop eop ENC MASK sep unk gMASK sMASK") == [0, 0, 24, 25, 26, 27, 28, 29, 30, 31]
    encoded = tokenizer.EncodeAsIds("Hello world [MASK] again!")
    assert isinstance(encoded, Tokenization) and encoded.MASK == 27
    # "Hello", " world"; [MASK] takes the space before it; " a" "g" "a" "i" "n" "!"
    assert encoded.tokenization == [17, 22, 27, 23, 13, 10, 11, 12, 9]
    assert tokenizer.tokenize("Hello<|endoftext|>[gMASK]") == [17, 0, 30]
    ids = [tokenizer.get_command("ENC").Id, *encoded.tokenization, tokenizer.get_command("eos").Id]
    assert tokenizer.DecodeIds(ids) == "[CLS] Hello world [MASK]  again! <|endoftext|>"
    assert tokenizer.tokens[26] == "[CLS]" and tokenizer.vocab["Ġworld"] == 22 and tokenizer.IdToToken(30) == "[gMASK]"
    assert tokenizer.EncodeAsIds("   ").tokenization == []
    plain = GPT2BPETokenizer(str(tmp_path / "gpt2"))
    assert len(plain) == 24 and list(plain.command_name_map) == ["pad", "eos"]


def test_roberta_layout_from_the_hf_cache(hf_home):
    symbols = ["<s>", "<pad>", "</s>", "<unk>", *GPT2_SYMBOLS[1:], "<mask>"]
    cache_as_hub_repo(hf_home, "roberta-base", lambda folder: write_gpt2_vocab(folder, symbols))
    tokenizer = GPT2BPETokenizer("roberta", add_block_symbols=True, add_task_mask=True, add_decoder_mask=True)
    # RoBERTa's own specials (a vocabulary of 28: 18 symbols, 10 merges), then sop eop gMASK sMASK dBLOCK.
    assert _ids(tokenizer, "pad eos sep ENC MASK unk") == [2, 2, 1, 0, 17, 3]
    assert _ids(tokenizer, "sop eop gMASK sMASK dBLOCK") == [28, 29, 30, 31, 32] and len(tokenizer) == 33
    assert tokenizer.tokenize("[CLS]Hello [MASK]") == [0, 21, 17]


def test_gpt2_name_missing_from_the_cache_says_what_to_download(hf_home):
    with pytest.raises(FileNotFoundError, match="hf download gpt2") as error:
        GPT2BPETokenizer("gpt2", add_block_symbols=True)
    assert str(hf_home / "hub") in str(error.value)


def test_bert_wordpiece_layout_and_decoding(tmp_path, hf_home):
    cache_as_hub_repo(hf_home, "bert-base-uncased", write_wordpiece_vocab)
    tokenizer = BertWordPieceTokenizer("bert-base-uncased", add_block_symbols=True, add_task_mask=True)
    assert _ids(tokenizer, "pad ENC MASK unk sep eos") == [0, 2, 4, 1, 3, 0]
    assert _ids(tokenizer, "sop eop gMASK sMASK") == [11, 12, 13, 14] and len(tokenizer) == 15
    ids = tokenizer.tokenize("Hello worlds. The [MASK]!")
    assert ids == [5, 6, 7, 9, 8, 4, 10]
    assert tokenizer.DecodeIds([2, *ids]) == "[CLS] hello worlds. the [MASK]!"
    cased = BertWordPieceTokenizer(write_wordpiece_vocab(tmp_path / "bert-cased") + "/vocab.txt")
    assert cased.tokenize("Hello world") == [1, 6]  # '-cased' in the name: no lower-casing, "Hello" is unknown
    sentinels = BertWordPieceTokenizer(str(tmp_path / "bert-cased"), add_block_symbols=True, add_sentinel_token=3)
    assert _ids(sentinels, "MASK1 sop1 MASK2 sop2") == [13, 14, 15, 16]


def test_chinese_sentencepiece_layout(tmp_path, monkeypatch):
    model = sentencepiece_model(tmp_path)
    tokenizer = ChineseSPTokenizer(model, add_block_symbols=True, add_task_mask=True, add_decoder_mask=True)
    n = tokenizer.num_text_tokens
    assert n == 64 and len(tokenizer) == 75
    ids = _ids(tokenizer, "pad eos sep ENC MASK unk sop eop sMASK gMASK dBLOCK")
    assert [index - n for index in ids] == [0, 0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    text_ids = tokenizer.text_tokenizer.encode("the quick brown fox")
    ids = tokenizer.tokenize("the quick brown fox [gMASK]")
    assert ids == [*text_ids, n + 9] and len(text_ids) >= 4
    assert tokenizer.DecodeIds(ids) == "the quick brown fox [gMASK]"

    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))
    with pytest.raises(FileNotFoundError, match="cog-pretrain.model") as error:
        ChineseSPTokenizer("glm-10b")
    assert str(tmp_path / "sat_home" / "tokenizers" / "cog-pretrain.model") in str(error.value)
    (tmp_path / "sat_home" / "tokenizers").mkdir(parents=True)
    shutil.copy(model, tmp_path / "sat_home" / "tokenizers" / "cog-pretrain.model")
    glm_10b = ChineseSPTokenizer("glm-10b", add_block_symbols=True, add_task_mask=True)
    # As in the original: glm-10b's gMASK follows eop's id (n + 7) and the spaces between tokens go.
    assert [glm_10b.get_command(name).Id - n for name in ("eop", "gMASK", "sMASK")] == [7, 7, 8]
    assert glm_10b.DecodeIds([*text_ids, n + 2]) == "the quick brown fox[CLS]"


def test_get_tokenizer_builds_them_from_the_glm_arguments(tmp_path):
    folder = write_gpt2_vocab(tmp_path / "gpt2")
    args = argparse.Namespace(
        tokenizer_type="glm_GPT2BPETokenizer", tokenizer_model_type=folder, task_mask=True, block_mask_prob=0.1
    )
    tokenizer = get_tokenizer(args)
    assert isinstance(tokenizer, GPT2BPETokenizer) and get_tokenizer() is tokenizer
    assert tokenizer.get_command("dBLOCK").Id == 32 and len(tokenizer) == 33
    assert len(get_tokenizer(argparse.Namespace(**{**vars(args), "task_mask": False, "block_mask_prob": 0.0}))) == 30
    with pytest.raises(ValueError, match="need args.tokenizer_model_type"):
        get_tokenizer(argparse.Namespace(tokenizer_type="glm_BertWordPieceTokenizer"))
    with pytest.raises(ValueError, match="unknown GLM tokenizer_type 'glm_Other'"):
        get_tokenizer(argparse.Namespace(tokenizer_type="glm_Other", tokenizer_model_type=folder))
