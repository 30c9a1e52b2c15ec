"""Mixins users add to models: the base class, the KV cache, the finetuning mixins and SDPA attention."""

from sat.model.attention import MemoryEfficientAttentionMixin, TransposedMemoryEfficientAttentionMixin
from sat.model.base_model import BaseMixin
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin
from sat.model.finetune import (
    AdapterMixin,
    FFADDMixin,
    LoRAMixin,
    LoraMixin,
    MLPHeadMixin,
    PrefixTuningMixin,
    PromptTuningMixin,
    PTuningV2Mixin,
)

__all__ = [
    "AdapterMixin",
    "BaseMixin",
    "CachedAutoregressiveMixin",
    "FFADDMixin",
    "LoRAMixin",
    "LoraMixin",
    "MLPHeadMixin",
    "MemoryEfficientAttentionMixin",
    "PTuningV2Mixin",
    "PrefixTuningMixin",
    "PromptTuningMixin",
    "TransposedMemoryEfficientAttentionMixin",
]
