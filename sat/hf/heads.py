"""What the causal-LM families share about the output head: whether an HF config is the
headless base model, the head's fields of the config written back, and a tied head that the
saved files left out."""

from __future__ import annotations

import torch


def is_headless(config, base_class: str) -> bool:
    """Whether ``config`` names HF's headless ``base_class`` (no architectures: the causal LM)."""
    architectures = getattr(config, "architectures", None)
    return bool(architectures) and architectures[0] == base_class


def head_fields(model, mixin: str, lm_class: str, base_class: str) -> dict:
    """``architectures`` (and ``tie_word_embeddings``: the head equals the embedding) of the HF
    config for a sat ``model`` whose head, if any, is the mixin ``mixin``."""
    if mixin not in model.mixins:
        return dict(architectures=[base_class])
    head = model.get_mixin(mixin).lm_head.weight
    tied = bool(torch.equal(head, model.transformer.word_embeddings.weight))
    return dict(architectures=[lm_class], tie_word_embeddings=tied)


def fill_tied_head(state: dict, config, base_class: str, embedding_key: str, always: bool = False) -> dict:
    """``state`` with ``lm_head.weight`` filled in from ``embedding_key`` when ``config`` ties
    them (or ``always``, where a missing head can only be the tied one) and the head was not
    saved. The same tensor, not a copy: sat's head is a parameter of its own, and loading gives
    it one (``load_state_dict_into`` copies a tensor a second parameter would share; a conversion
    to another dtype makes one anyway), so a copy here would only cost a pass over the
    embedding and its memory."""
    tied = always or getattr(config, "tie_word_embeddings", False)
    if tied and not is_headless(config, base_class) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state[embedding_key]
    return state
