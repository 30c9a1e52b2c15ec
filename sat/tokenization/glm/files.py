"""Where the GLM tokenizers' vocabulary files come from: a local path, or the local HF cache for
the names the original shipped files for (nothing is downloaded)."""

from __future__ import annotations

import os

from sat.tokenization.hub import cached_snapshot

# The original's names for the vocabularies it shipped, and the Hub repository holding each.
HUB_NAMES = {"gpt2": "gpt2", "roberta": "roberta-base"}


def vocabulary_folder(model_type_or_path: str, needed: tuple[str, ...]) -> str:
    """The folder holding ``needed`` files for ``model_type_or_path``: that folder itself, or the
    cached snapshot of its Hub repository (``HUB_NAMES`` maps the original's short names).

    Raises:
        FileNotFoundError: the name is neither a local folder nor cached (the message says where
            the cache is and what to download), or the folder lacks one of ``needed``.
    """
    if os.path.isdir(model_type_or_path):
        folder = model_type_or_path
    else:
        folder = cached_snapshot(HUB_NAMES.get(model_type_or_path, model_type_or_path))
    missing = [name for name in needed if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no {' or '.join(missing)}, needed for the {model_type_or_path!r} vocabulary"
        )
    return folder


def bert_vocab_file(model_type_or_path: str) -> str:
    """A WordPiece ``vocab.txt``: the file given, the one in the folder given, or the one in the
    cached Hub repository of that name (``bert-base-uncased``, ``bert-large-uncased``...)."""
    if os.path.isfile(model_type_or_path):
        return model_type_or_path
    return os.path.join(vocabulary_folder(model_type_or_path, ("vocab.txt",)), "vocab.txt")
