"""Finetuning mixins: prefix and prompt tuning, LoRA (and QLoRA), adapters, FFADD, an MLP head,
and the helpers that choose which parameters train."""

from sat.model.finetune.adapter import AdapterMixin
from sat.model.finetune.ffadd import FFADDMixin
from sat.model.finetune.freeze import ParameterCount, count_parameters, freeze_all_but
from sat.model.finetune.lora import LoRAMixin
from sat.model.finetune.lora2 import LoraLinear, LoraMixin
from sat.model.finetune.mlp_head import MLPHeadMixin
from sat.model.finetune.prompt_tuning import PrefixTuningMixin, PromptTuningMixin, PTuningV2Mixin

__all__ = [
    "AdapterMixin",
    "FFADDMixin",
    "LoRAMixin",
    "LoraLinear",
    "LoraMixin",
    "MLPHeadMixin",
    "PTuningV2Mixin",
    "ParameterCount",
    "PrefixTuningMixin",
    "PromptTuningMixin",
    "count_parameters",
    "freeze_all_but",
]
