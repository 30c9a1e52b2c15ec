"""Tokenizers named by their HuggingFace Hub id (``bert-base-uncased``, ``gpt2``,
``THUDM/chatglm2-6b``), read from the local HF cache only: nothing is downloaded."""

from __future__ import annotations

import os


def hub_cache_dir() -> str:
    """The folder ``huggingface_hub`` caches repositories in: ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else its default; read at each call, so setting ``HF_HOME`` after
    ``huggingface_hub`` was imported still counts."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_snapshot(name: str) -> str:
    """The cached snapshot folder of Hub repository ``name`` (what ``refs/main`` points to).

    Raises:
        FileNotFoundError: ``name`` is not in the cache; the message names the cache folder and
            the command that downloads it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        return snapshot_download(name, cache_dir=cache, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError) as error:
        raise FileNotFoundError(
            f"tokenizer {name!r} is not in the HuggingFace cache {cache} (looked for "
            f"models--{name.replace('/', '--')}/snapshots/, offline). Download it where there is a network with "
            f"`hf download {name}` (set HF_HOME to use another cache), or pass a local tokenizer folder as "
            f"tokenizer_type; 'fake' needs no files ({error.__class__.__name__}: {error})"
        ) from None


def hub_tokenizer(name: str):
    """``transformers.AutoTokenizer`` for the cached copy of ``name``; like the original,
    ``trust_remote_code=True``, so a cached repository's own tokenizer class (ChatGLM) loads."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached_snapshot(name), trust_remote_code=True, local_files_only=True)
