"""The modules of one transformer layer, each with the default computation of its hooks."""

from sat.model.layers.attention import CrossAttention, SelfAttention, attention_fn_default, standard_attention
from sat.model.layers.base import HookedModule, LayerBuild, owned_init
from sat.model.layers.layer import BaseTransformerLayer, drop_path
from sat.model.layers.mlp import MLP

__all__ = [
    "MLP",
    "BaseTransformerLayer",
    "CrossAttention",
    "HookedModule",
    "LayerBuild",
    "SelfAttention",
    "attention_fn_default",
    "drop_path",
    "owned_init",
    "standard_attention",
]
