"""``CompositeModel``: a plain ``torch.nn.Module`` made of several ``BaseModel``s (an
encoder and a decoder, CLIP's two towers), with what ``BaseModel`` gives a model class: registration for ``AutoModel``,
``get_args``, ``from_pretrained`` and the training calls forwarded to every part.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch

from sat.model.base_model import BaseModel
from sat.model.registry import model_registry


def add_override_args(group, prefix: str, names: Sequence[str]) -> None:
    """``--<prefix>-<name>`` arguments, default ``None``, that ``override_args`` applies: the
    sizes in which one part differs from the others (CLIP's ``--text-num-layers``)."""
    for name in names:
        kind = str if name == "layernorm_order" else int
        group.add_argument(f"--{prefix}-{name.replace('_', '-')}", type=kind, default=None)


def override_args(args: argparse.Namespace, prefix: str, names: Sequence[str]) -> argparse.Namespace:
    """A copy of ``args`` with every ``<prefix>_<name>`` that is set replacing ``<name>``."""
    result = copy.copy(args)
    for name in names:
        value = getattr(args, f"{prefix}_{name}", None)
        if value is not None:
            setattr(result, name, value)
    return result


class CompositeModel(torch.nn.Module):
    """Subclasses list their ``BaseModel`` attributes in ``parts`` and are registered by class
    name, so ``AutoModel`` builds them from ``model_config.json`` (the original could not: its
    composites were plain modules outside the registry)."""

    parts: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        model_registry.register(cls)

    def reinit(self, mixin_names: list[str] | None = None) -> None:
        """Re-initialise the named mixins of every part (give them distinct names)."""
        for name in self.parts:
            getattr(self, name).reinit(mixin_names)

    def disable_untrainable_params(self) -> None:
        """Freeze what every part freezes."""
        for name in self.parts:
            getattr(self, name).disable_untrainable_params()

    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return parser

    # The same as BaseModel's, for this class.
    list_avail_args = vars(BaseModel)["list_avail_args"]
    get_args = vars(BaseModel)["get_args"]

    @classmethod
    def from_pretrained(cls, name, args: argparse.Namespace | None = None, *, path: str | None = None, **kwargs):
        """``BaseModel.from_pretrained`` for this class, returning ``(model, args)``. The
        original's order ``from_pretrained(args, name, path=..., url=...)`` works too; ``path``
        is ``home_path``."""
        if isinstance(name, argparse.Namespace):
            name, args = args, name
        if path is not None:
            kwargs["home_path"] = path
        return vars(BaseModel)["from_pretrained"].__func__(cls, name, args, **kwargs)
