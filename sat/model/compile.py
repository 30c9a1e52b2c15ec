"""``torch.compile`` for the layer stack: each transformer layer compiled as one graph.

The layers are where the time goes, and each compiles whole (``fullgraph=True``): the hook
lookup is a dict read, the masks' kinds are Python attributes, and the default hooks, the
KV-cache and LoRA mixins trace without a graph break (tests/test_compile.py). The embeddings,
the output head and the hook table refill in ``BaseModel.forward`` stay eager: they run once
per forward and change with every mixin.

The layers share one graph (their parameters are graph inputs), so a model compiles once per
new input shape, not once per layer.
"""

from __future__ import annotations

import torch


def compile_layers(model: torch.nn.Module, *, fullgraph: bool = True, **compile_kwargs) -> torch.nn.Module:
    """Compile every layer of ``model.transformer`` (or of ``model``, a ``BaseTransformer``) in
    place with ``torch.compile(fullgraph=fullgraph, **compile_kwargs)`` (``backend``, ``mode``,
    ``dynamic``...); returns ``model``. The parameters and the state dict are unchanged."""
    transformer = getattr(model, "transformer", model)
    layers = getattr(transformer, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(
            f"compile_layers needs a sat model or a BaseTransformer (.transformer.layers), got {type(model).__name__}"
        )
    for layer in layers:
        layer.compile(fullgraph=fullgraph, **compile_kwargs)
    return model
