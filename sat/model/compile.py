"""``torch.compile`` for the layer stack: each transformer layer compiled as one graph.

The layers are where the time goes, and each compiles whole (``fullgraph=True``): the hook
lookup is a dict read, the masks' kinds are Python attributes, and the default hooks, the
KV-cache and LoRA mixins trace without a graph break (tests/test_compile.py). The embeddings,
the output head and the hook table refill in ``BaseModel.forward`` stay eager: they run once
per forward and change with every mixin.

The layers share one graph (their parameters are graph inputs), so a model compiles once per
new input shape, not once per layer. Code that reads Python state per layer (the KV cache
indexes its buffers by ``layer_id``) specialises the graph to each layer instead: Dynamo's
recompile limit (8 per function by default) is raised to 8 per layer so that every layer keeps
its compiled graph (past the limit, ``fullgraph=True`` fails).
"""

from __future__ import annotations

import torch
import torch._dynamo

_RECOMPILES_PER_LAYER = 8  # Dynamo's default recompile_limit for one function


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
    # Every layer runs the same code object (Module._call_impl), whose cache Dynamo bounds.
    per_function = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(per_function, _RECOMPILES_PER_LAYER * len(layers))
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, torch._dynamo.config.recompile_limit
    )
    for layer in layers:
        layer.compile(fullgraph=fullgraph, **compile_kwargs)
    return model
