"""sat: a mixin-based transformer framework (a re-implementation of SwissArmyTransformer).

Public names are imported lazily, so ``import sat`` stays light: it never imports DeepSpeed,
transformers, triton or wandb.
"""

from __future__ import annotations

import importlib

__version__ = "0.5.0"

_LAZY = {
    "AutoModel": "sat.model",
    "BaseModel": "sat.model",
    "BaseMixin": "sat.model",
    "get_args": "sat.arguments",
    "get_tokenizer": "sat.tokenization",
    # Exported by older 0.x releases; the original's T5 and GLM example scripts import them from sat.
    "initialize_distributed": "sat.runtime",
    "load_checkpoint": "sat.training.model_io",
    "set_random_seed": "sat.runtime",
    "training_main": "sat.training.deepspeed_training",
    "update_args_with_file": "sat.arguments",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
