"""Hand-written tiny vocabularies in the files the GLM tokenizers read, so tests know every id."""

from __future__ import annotations

import json
import os

# Byte-level BPE (GPT-2 layout): ids 0-13 single symbols (``Ġ`` is the space byte), 14-23 merges.
GPT2_SYMBOLS = ["<|endoftext|>", "H", "e", "l", "o", "Ġ", "w", "r", "d", "!", "a", "i", "n", "g"]
GPT2_MERGES = [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d")]
GPT2_MERGES += [("Ġwor", "ld"), ("Ġ", "a")]
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "the", ".", "!"]


def write_gpt2_vocab(folder, symbols: list[str] | None = None) -> str:
    """``vocab.json`` and ``merges.txt`` in ``folder``: ``symbols`` (default ``GPT2_SYMBOLS``)
    then one token per merge of ``GPT2_MERGES``."""
    os.makedirs(folder, exist_ok=True)
    vocab = {token: i for i, token in enumerate(symbols or GPT2_SYMBOLS)}
    for left, right in GPT2_MERGES:
        vocab[left + right] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in GPT2_MERGES))
    return str(folder)


def write_wordpiece_vocab(folder) -> str:
    """``vocab.txt`` with ``WORDPIECE`` in ``folder``; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("".join(token + "\n" for token in WORDPIECE))
    return str(folder)


def cache_as_hub_repo(hf_home, name: str, write) -> str:
    """Store what ``write(folder)`` writes as the HF cache stores Hub repository ``name``."""
    repo = os.path.join(str(hf_home), "hub", "models--" + name.replace("/", "--"))
    revision = "0123abcd" * 5
    write(os.path.join(repo, "snapshots", revision))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    return os.path.join(repo, "snapshots", revision)
