"""The original's home of the hook registry, kept as a public path.

``HOOKS_DEFAULT`` and ``HOOK_SPECS`` live in ``sat.model.hook_specs``, the default computations
in the backbone's modules (``sat.model.layers``, ``sat.model.transformer``), ``ARGS_DEFAULT``
in ``sat.config``, ``NO_WD_MODULES`` in ``sat.ops.layernorm``.
"""

from sat.config import ARGS_DEFAULT
from sat.model.hook_specs import (
    HOOK_SPECS,
    HOOKS_DEFAULT,
    HookSpec,
    attention_forward_default,
    cross_attention_forward_default,
    final_forward_default,
    layer_forward_default,
    mlp_forward_default,
    position_embedding_forward_default,
    routing_forward_default,
    word_embedding_forward_default,
)
from sat.model.layers import attention_fn_default, standard_attention
from sat.ops.layernorm import NO_WD_MODULES

__all__ = [
    "ARGS_DEFAULT",
    "HOOKS_DEFAULT",
    "HOOK_SPECS",
    "NO_WD_MODULES",
    "HookSpec",
    "attention_fn_default",
    "attention_forward_default",
    "cross_attention_forward_default",
    "final_forward_default",
    "layer_forward_default",
    "mlp_forward_default",
    "position_embedding_forward_default",
    "routing_forward_default",
    "standard_attention",
    "word_embedding_forward_default",
]
