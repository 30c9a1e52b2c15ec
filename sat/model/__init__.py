"""Models: the backbone, mixins, the registry and ``AutoModel``; the zoo's classes
(``sat.model.official``) are importable from here too, loaded on first use."""

from sat.model.auto import AutoModel, get_model_class, list_avail_models
from sat.model.base_model import BaseMixin, BaseModel, non_conflict, replacable
from sat.model.build import get_model
from sat.model.cached_autoregressive_model import CachedAutoregressiveModel
from sat.model.encoder_decoder_model import EncoderDecoderModel
from sat.model.registry import model_registry
from sat.model.transformer import BaseTransformer

__all__ = [
    "AutoModel",
    "BaseMixin",
    "BaseModel",
    "BaseTransformer",
    "CachedAutoregressiveModel",
    "EncoderDecoderModel",
    "get_model",
    "get_model_class",
    "list_avail_models",
    "model_registry",
    "non_conflict",
    "replacable",
]


def __getattr__(name: str):
    import importlib

    official = importlib.import_module("sat.model.official")
    if name in official.__all__:
        return getattr(official, name)
    raise AttributeError(f"module 'sat.model' has no attribute {name!r}")
