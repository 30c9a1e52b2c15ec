"""A model family: how one ``transformers`` architecture and one sat model class correspond."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sat.hf.mapping import StateDictMap


@dataclass(frozen=True)
class Family:
    """Everything ``sat.hf`` needs to translate one architecture in both directions.

    Attributes:
        name: short name (``"gpt2"``).
        model_types: the HF ``config.model_type`` values it handles; dispatch is by these only.
        sat_class: the registered sat model class built from HF weights, or a function of the
            HF config naming it (one HF model type, several sat classes: DPR's encoders and reader).
        sat_classes: with a function ``sat_class``, every class it may name (``to_hf`` finds
            the family of a sat model by its class).
        hf_class: the ``transformers`` class ``to_hf`` builds, or a function of the sat
            arguments naming it (a family with a headless variant).
        table: the declarative state-dict map (see ``sat.hf.mapping``), or a function of the
            sat arguments returning it (rows that depend on the configuration: a head that may
            be absent, a name that moves with the layer count).
        config_to_args: HF config -> dict of sat arguments (architecture and model arguments).
        model_to_config: sat model -> HF config object.
        context: sat model arguments -> sizes the map's transforms need.
        num_layers: how many times ``{}`` entries repeat.
        prepare_hf_state: fixes an HF state dict before mapping (add a base-model prefix, fill a
            tied output embedding that was not saved, split stacked expert weights).
        finish_hf_state: the other way, fixes the mapped HF state dict into the layout the
            installed ``transformers`` class loads (stack per-expert weights).
        ignore_hf: regexes of HF keys to drop (buffers).
    """

    name: str
    model_types: tuple[str, ...]
    sat_class: str | Callable[[object], str]
    hf_class: str | Callable[[object], str]
    table: Sequence[tuple] | Callable[[object], Sequence[tuple]]
    config_to_args: Callable[[object], dict]
    model_to_config: Callable[[torch.nn.Module], object]
    context: Callable[[object], dict] = lambda args: {}
    num_layers: Callable[[object], int] = lambda args: args.num_layers
    prepare_hf_state: Callable[[dict, object], dict] = lambda state, config: state
    finish_hf_state: Callable[[dict, object], dict] = lambda state, config: state
    ignore_hf: tuple[str, ...] = field(default=())
    sat_classes: tuple[str, ...] = field(default=())

    def state_map(self, args) -> StateDictMap:
        table = self.table(args) if callable(self.table) else self.table
        return StateDictMap.build(table, self.num_layers(args), self.ignore_hf)

    def sat_class_name(self, config) -> str:
        """The sat class built from HF ``config``."""
        return self.sat_class(config) if callable(self.sat_class) else self.sat_class

    def hf_class_name(self, args) -> str:
        """The ``transformers`` class for a sat model with arguments ``args``."""
        return self.hf_class(args) if callable(self.hf_class) else self.hf_class


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register_family(family: Family) -> Family:
    """Make ``family`` available to ``from_hf``/``to_hf``."""
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def _load_families() -> None:
    global _loaded
    if not _loaded:
        import sat.hf.families as package

        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _loaded = True


def families() -> dict[str, Family]:
    """Every registered family by HF ``model_type``."""
    _load_families()
    return dict(_FAMILIES)


def family_for_model_type(model_type: str) -> Family:
    """The family for an HF ``config.model_type``."""
    known = families()
    if model_type not in known:
        raise ValueError(f"sat.hf cannot translate model_type {model_type!r}; supported: {sorted(known)}")
    return known[model_type]


def family_for_sat_model(model: torch.nn.Module) -> Family:
    """The family whose sat class ``model`` is (or subclasses)."""
    by_class = {name: family for family in families().values() for name in family.sat_classes or (family.sat_class,)}
    for cls in type(model).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]
    raise ValueError(
        f"sat.hf has no transformers counterpart for {type(model).__name__}; translatable classes: {sorted(by_class)}"
    )
