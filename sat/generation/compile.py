"""Compiled decoding: ``compile_for_generation(model)`` before ``filling_sequence``."""

from __future__ import annotations

import torch

from sat.model.compile import compile_layers


def compile_for_generation(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """Compile ``model``'s layers (``sat.model.compile.compile_layers``) for decoding, in place;
    returns it in eval mode. Shapes are dynamic by default (``dynamic=True``): the prompt's
    length and the cache's length change at every step, and a graph specialised to each would
    recompile at every step; pass ``dynamic=False`` to choose otherwise."""
    compile_kwargs.setdefault("dynamic", True)
    return compile_layers(model, **compile_kwargs).eval()
