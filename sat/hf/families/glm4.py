"""What GLM-4-0414 (``Glm4ForCausalLM``, model_type ``"glm4"``) adds to GLM (``glm.py``, which
registers the family of both): a norm after the attention and after the MLP of every layer,
sat's sandwich layer-norm order (``third_layernorm``, ``fourth_layernorm``)."""

from __future__ import annotations

MODEL_TYPE = "glm4"
HF_CLASS = "Glm4ForCausalLM"
LAYERNORM_ORDER = "sandwich"

_LAYER, _HF_LAYER = "transformer.layers.{}.", "model.layers.{}."
SANDWICH_ROWS = [
    (_LAYER + "third_layernorm.weight", _HF_LAYER + "post_self_attn_layernorm.weight"),
    (_LAYER + "fourth_layernorm.weight", _HF_LAYER + "post_mlp_layernorm.weight"),
]


def config_class():
    from transformers import Glm4Config

    return Glm4Config
