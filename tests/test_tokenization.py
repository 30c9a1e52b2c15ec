"""get_tokenizer: fake, transformers directories, sentencepiece models, Hub names from the local HF
cache (offline), clear errors for what is not included; the process-wide cache; tokenizer_type
through model_config.json."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest
from tiny_vocabs import cache_as_hub_repo

import sat.tokenization
from sat.model import AutoModel, BaseModel
from sat.tokenization import FakeTokenizer, SentencePieceTokenizer, get_tokenizer
from sat.training.model_io import save_checkpoint

TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(autouse=True)
def _fresh_cache():
    sat.tokenization._current.clear()
    yield
    sat.tokenization._current.clear()


def hf_tokenizer_directory(path) -> str:
    """A tiny word-level ``transformers`` tokenizer saved to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", "[PAD]", *sorted(set(TEXT.split()))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)
    return str(path)


def sentencepiece_model(folder) -> str:
    """A 64-piece unigram sentencepiece model trained on a few hundred lines (milliseconds)."""
    import sentencepiece

    corpus = folder / "corpus.txt"
    words = TEXT.split()
    corpus.write_text("\n".join(" ".join(words[i % 9 :] + words[: i % 9]) + f" {i}" for i in range(250)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=64, model_type="unigram", minloglevel=2
    )
    return str(folder / "sp.model")


def test_fake_tokenizer_looks_nothing_up():
    code = (
        "import sys, argparse, sat\n"
        "tokenizer = sat.get_tokenizer(argparse.Namespace(tokenizer_type='fake', vocab_size=321))\n"
        "print(type(tokenizer).__name__, len(tokenizer), 'transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FakeTokenizer", "321", "False"]


def test_cache_and_outer_tokenizer():
    with pytest.raises(RuntimeError, match="no tokenizer set yet"):
        get_tokenizer()
    args = argparse.Namespace(tokenizer_type="fake", vocab_size=100)
    first = get_tokenizer(args)
    assert isinstance(first, FakeTokenizer) and first.vocab_size == 100
    assert get_tokenizer(args) is first and get_tokenizer() is first
    assert len(get_tokenizer(argparse.Namespace(tokenizer_type="fake", vocab_size=7))) == 7
    mine = object()
    assert get_tokenizer(outer_tokenizer=mine) is mine and get_tokenizer() is mine


def cache_on_the_hub_layout(hf_home, name: str) -> str:
    """A tiny tokenizer stored as the HF hub cache stores ``name``:
    ``hub/models--ORG--NAME/snapshots/<revision>/`` and ``refs/main`` holding ``<revision>``."""
    return cache_as_hub_repo(hf_home, name, hf_tokenizer_directory)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF cache in HF_HOME (offline, as conftest sets HF_HUB_OFFLINE=1)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


@pytest.mark.parametrize("name", ["bert-base-uncased", "THUDM/chatglm2-6b"])
def test_hub_names_come_from_the_local_cache(hf_home, name):
    cache_on_the_hub_layout(hf_home, name)
    tokenizer = get_tokenizer(argparse.Namespace(tokenizer_type=name))
    ids = tokenizer(TEXT)["input_ids"]
    assert len(ids) == 9 and tokenizer.decode(ids) == TEXT
    assert get_tokenizer() is tokenizer and sat.tokenization._current["key"] == ("name", name)


def test_a_hub_name_missing_from_the_cache_says_where_and_what_to_download(hf_home):
    with pytest.raises(FileNotFoundError) as error:
        get_tokenizer(argparse.Namespace(tokenizer_type="gpt2", vocab_size=100))
    message = str(error.value)
    assert str(hf_home / "hub") in message and "models--gpt2/snapshots" in message and "hf download gpt2" in message
    assert "key" not in sat.tokenization._current


@pytest.mark.parametrize(
    "name, error, words",
    [
        ("cogview", ValueError, "VQVAE image tokenizer"),
        ("icetk-glm-130B", ValueError, "pip install icetk.*outer_tokenizer"),
        ("icetk", ImportError, "pip install icetk"),
    ],
)
def test_tokenizers_not_included_say_what_is_needed(name, error, words):
    with pytest.raises(error, match=words):
        get_tokenizer(argparse.Namespace(tokenizer_type=name, vocab_size=100))


def test_the_originals_fake_names_and_a_file_that_is_no_tokenizer():
    assert len(get_tokenizer(argparse.Namespace(tokenizer_type="Fake", vocab_size=12))) == 12
    with pytest.raises(ValueError, match="neither a transformers tokenizer folder"):
        get_tokenizer(argparse.Namespace(tokenizer_type=__file__))


def test_transformers_directory(tmp_path):
    tokenizer = get_tokenizer(tokenizer_type=hf_tokenizer_directory(tmp_path / "tok"))
    ids = tokenizer(TEXT)["input_ids"]
    assert len(ids) == 9 and tokenizer.decode(ids) == TEXT


def test_sentencepiece_model(tmp_path):
    tokenizer = get_tokenizer(tokenizer_type=sentencepiece_model(tmp_path))
    assert isinstance(tokenizer, SentencePieceTokenizer) and len(tokenizer) == 64
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert "".join(tokenizer.tokenize(TEXT)).replace("\u2581", " ").strip() == TEXT


def _save_tiny_model(folder, tokenizer_type: str) -> None:
    args = BaseModel.get_args(
        num_layers=1, hidden_size=16, num_attention_heads=2, vocab_size=32, tokenizer_type=tokenizer_type
    )
    args.save = str(folder)
    save_checkpoint(1, BaseModel(args), None, None, args)


def test_tokenizer_shipped_inside_a_checkpoint_moves_with_it(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    directory = hf_tokenizer_directory(checkpoint / "tokenizer")
    _save_tiny_model(checkpoint, directory)
    assert json.loads((checkpoint / "model_config.json").read_text())["tokenizer_type"] == "tokenizer"
    expected = get_tokenizer(tokenizer_type=directory)(TEXT)["input_ids"]

    moved = shutil.move(str(checkpoint), str(tmp_path / "moved"))
    sat.tokenization._current.clear()
    _, args = AutoModel.from_pretrained(moved)
    assert args.tokenizer_type == str(tmp_path / "moved" / "tokenizer")
    assert get_tokenizer(args)(TEXT)["input_ids"] == expected


def test_tokenizer_outside_the_checkpoint_is_recorded_in_full(tmp_path, monkeypatch):
    model_file = sentencepiece_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    _save_tiny_model(tmp_path / "checkpoint", "sp.model")  # relative to the working directory
    assert json.loads((tmp_path / "checkpoint" / "model_config.json").read_text())["tokenizer_type"] == model_file
    _, args = AutoModel.from_pretrained(str(tmp_path / "checkpoint"))
    assert get_tokenizer(args).encode(TEXT) == SentencePieceTokenizer(model_file).encode(TEXT)


def test_fake_type_is_not_recorded(tmp_path):
    _save_tiny_model(tmp_path, "fake")
    assert "tokenizer_type" not in json.loads((tmp_path / "model_config.json").read_text())
