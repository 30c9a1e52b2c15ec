"""Tokenizers: ``get_tokenizer`` builds one from ``tokenizer_type`` and keeps it for the process.

``tokenizer_type`` is one of:

- ``'fake'`` (any case, as the original's ``'Fake'``): ``FakeTokenizer(args.vocab_size)``, token
  ids only (nothing is looked up);
- a directory holding a ``transformers`` tokenizer (``tokenizer.json``,
  ``tokenizer_config.json``...), loaded with ``AutoTokenizer`` from local files only;
- a sentencepiece model file (``*.model``): ``SentencePieceTokenizer``;
- a HuggingFace Hub name (``bert-base-uncased``, ``gpt2``, ``THUDM/chatglm2-6b``): its copy in the
  local HF cache, as ``transformers`` finds it offline;
- ``icetk``: the ``icetk`` package, if installed;
- ``glm_GPT2BPETokenizer``, ``glm_BertWordPieceTokenizer``, ``glm_ChineseSPTokenizer``: the GLM
  tokenizers (``sat.tokenization.glm``) over the vocabulary ``args.tokenizer_model_type`` names,
  with the block and task-mask tokens ``args.task_mask`` and ``args.block_mask_prob`` ask for.

Anything else raises, naming what is missing: there is no download and no silent fallback to the
fake tokenizer. The CogView and GLM-130B icetk tokenizers are not included (the error says how to pass
one with ``outer_tokenizer``). ``save_checkpoint`` records ``tokenizer_type`` in
``model_config.json`` (unless ``'fake'``): a tokenizer inside the checkpoint directory relative to
it, so the checkpoint can move, any other local path absolute. ``update_args_with_file`` turns a
path relative to the checkpoint back into a full one, so ``AutoModel.from_pretrained`` then
``get_tokenizer(args)`` finds it.
"""

from __future__ import annotations

import os

from sat.helpers import print_rank0
from sat.tokenization.fake import FakeTokenizer
from sat.tokenization.glm_types import glm_options, glm_tokenizer
from sat.tokenization.hub import hub_tokenizer
from sat.tokenization.sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = ["FakeTokenizer", "SentencePieceTokenizer", "get_tokenizer"]

_current: dict = {}  # "key" (what was built) and "tokenizer"


def get_tokenizer(args=None, *, tokenizer_type: str | None = None, outer_tokenizer=None):
    """The process-wide tokenizer.

    Args:
        args: reads ``args.tokenizer_type`` (and ``args.vocab_size`` for ``'fake'``).
        tokenizer_type: overrides ``args.tokenizer_type``.
        outer_tokenizer: any tokenizer object to register and return.
    Returns:
        the tokenizer for ``tokenizer_type`` (built once, then cached), or with no arguments the
        one set last.
    """
    if outer_tokenizer is not None:
        _current.update(key="outer_tokenizer", tokenizer=outer_tokenizer)
        return outer_tokenizer
    if tokenizer_type is None:
        if args is None:
            if "tokenizer" not in _current:
                raise RuntimeError(
                    "no tokenizer set yet: call get_tokenizer(args) or get_tokenizer(tokenizer_type=...)"
                )
            return _current["tokenizer"]
        tokenizer_type = args.tokenizer_type
    key = _key(tokenizer_type, args)
    if _current.get("key") != key:
        _current.update(key=key, tokenizer=_build(tokenizer_type, args))
        print_rank0(f"> tokenizer set from {tokenizer_type!r}; get_tokenizer() returns it from now on.")
    return _current["tokenizer"]


def _key(tokenizer_type: str, args) -> tuple:
    if tokenizer_type.lower() == "fake":
        return ("fake", getattr(args, "vocab_size", None))
    if tokenizer_type.startswith("glm_"):
        return ("glm", tokenizer_type, *glm_options(args))
    if os.path.exists(tokenizer_type):
        return ("path", os.path.abspath(tokenizer_type))
    return ("name", tokenizer_type)


# The original's tokenizers that sat does not include, and why.
_NOT_INCLUDED = {
    "cogview": "the CogView tokenizer bundles a VQVAE image tokenizer (a checkpoint at args.img_tokenizer_path) "
    "and needs CUDA",
    "icetk-glm-130B": "the GLM-130B icetk wrapper is not included (it wraps the icetk package: pip install icetk, "
    "which downloads its ice_text.model on first use)",
}
_OUTER = "build the tokenizer yourself and register it with get_tokenizer(outer_tokenizer=...)"


def _build(tokenizer_type: str, args):
    if tokenizer_type.lower() == "fake":
        if getattr(args, "vocab_size", None) is None:
            raise ValueError("the fake tokenizer needs args.vocab_size")
        return FakeTokenizer(args.vocab_size)
    if os.path.isdir(tokenizer_type):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer_type, local_files_only=True)
    if os.path.isfile(tokenizer_type) and tokenizer_type.endswith(".model"):
        return SentencePieceTokenizer(tokenizer_type)
    for prefix, why in _NOT_INCLUDED.items():
        if tokenizer_type.startswith(prefix):
            raise ValueError(f"tokenizer_type {tokenizer_type!r}: {why}; {_OUTER}")
    if tokenizer_type == "icetk":
        try:
            from icetk import icetk
        except ImportError:
            raise ImportError(
                "tokenizer_type 'icetk' needs the icetk package: pip install icetk (it downloads its model files "
                f"on first use), or {_OUTER}"
            ) from None
        return icetk
    if tokenizer_type.startswith("glm_"):
        return glm_tokenizer(tokenizer_type, args)
    if os.path.exists(tokenizer_type):
        raise ValueError(
            f"tokenizer_type {tokenizer_type!r} is neither a transformers tokenizer folder nor a sentencepiece "
            ".model file"
        )
    return hub_tokenizer(tokenizer_type)


def portable_tokenizer_type(tokenizer_type: str, folder: str) -> str:
    """How ``model_config.json`` in ``folder`` records ``tokenizer_type``: a local path inside
    ``folder`` relative to it, another local path absolute, anything else unchanged."""
    if not os.path.exists(tokenizer_type):
        return tokenizer_type
    path, folder = os.path.abspath(tokenizer_type), os.path.abspath(folder)
    return os.path.relpath(path, folder) if path.startswith(folder + os.sep) else path


def resolve_tokenizer_type(tokenizer_type: str, folder: str) -> str:
    """The reverse, reading ``model_config.json`` in ``folder``: a relative path that exists
    inside ``folder`` becomes a full one."""
    candidate = os.path.join(folder, tokenizer_type)
    return candidate if not os.path.isabs(tokenizer_type) and os.path.exists(candidate) else tokenizer_type
