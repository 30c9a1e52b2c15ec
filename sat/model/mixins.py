"""Mixins users add to models: the base class, the KV cache and the finetuning mixins."""

from sat.model.base_model import BaseMixin
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin
from sat.model.finetune import MLPHeadMixin

__all__ = ["BaseMixin", "CachedAutoregressiveMixin", "MLPHeadMixin"]
