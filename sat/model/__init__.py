"""Models: the backbone, mixins, the registry and ``AutoModel``."""

from sat.model.base_model import AutoModel, BaseMixin, BaseModel, get_model, non_conflict, replacable
from sat.model.registry import model_registry
from sat.model.transformer import BaseTransformer

__all__ = [
    "AutoModel",
    "BaseMixin",
    "BaseModel",
    "BaseTransformer",
    "get_model",
    "model_registry",
    "non_conflict",
    "replacable",
]
