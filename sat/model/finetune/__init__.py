"""Finetuning mixins."""

from sat.model.finetune.mlp_head import MLPHeadMixin

__all__ = ["MLPHeadMixin"]
