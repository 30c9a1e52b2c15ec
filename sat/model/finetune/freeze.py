"""Choosing what trains: freeze all but matching parameters, and count what trains."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch


def freeze_all_but(model: torch.nn.Module, patterns: Iterable[str]) -> list[str]:
    """Train only the parameters whose name matches one of ``patterns`` (``re.search``, so a
    plain substring such as ``"matrix_A"`` works); freeze the rest. Returns the names left
    trainable. Call it from a model's ``disable_untrainable_params``::

        def disable_untrainable_params(self):
            freeze_all_but(self, ["matrix_A", "matrix_B", r"mixins\\.head\\."])
    """
    compiled = [re.compile(pattern) for pattern in patterns]
    keep = {name: any(pattern.search(name) for pattern in compiled) for name, _ in model.named_parameters()}
    if not any(keep.values()):
        raise ValueError(f"no parameter name matches {[p.pattern for p in compiled]}; nothing would train")
    for name, param in model.named_parameters():
        param.requires_grad_(keep[name])
    return [name for name, kept in keep.items() if kept]


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts (shared tensors counted once)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} of {self.total:,} ({100 * self.fraction:.4g}%)"


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """How many of ``model``'s parameters train; ``print(count_parameters(model))`` reports it."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
