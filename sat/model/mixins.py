"""Mixins users add to models: the base class, the KV cache, and (as they land) finetuning
mixins."""

from sat.model.base_model import BaseMixin
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin

__all__ = ["BaseMixin", "CachedAutoregressiveMixin"]
