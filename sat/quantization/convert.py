"""``quantize(model, bits)``: every parallel linear layer of a model, quantized in place."""

from __future__ import annotations

import torch

from sat.helpers import print_rank0
from sat.mpu import ColumnParallelLinear, RowParallelLinear
from sat.quantization.layers import QuantizedColumnParallelLinear, QuantizedRowParallelLinear, QuantizedWeight
from sat.quantization.packing import max_level


def _quantized_class(layer: torch.nn.Module) -> type[QuantizedWeight] | None:
    if isinstance(layer, QuantizedWeight):
        return None
    if isinstance(layer, RowParallelLinear):
        return QuantizedRowParallelLinear
    if isinstance(layer, ColumnParallelLinear):
        return QuantizedColumnParallelLinear
    return None


@torch.no_grad()
def quantize(model: torch.nn.Module, weight_bit_width: int) -> torch.nn.Module:
    """Store the weight of every ``ColumnParallelLinear``/``RowParallelLinear`` of ``model`` (the
    layers the original replaced; embeddings and plain ``torch.nn.Linear`` stay as they are) in
    ``weight_bit_width`` (8 or 4) bits, in place, on the device the weight is on; returns
    ``model``. Each layer keeps its attributes and model-parallel shard. Checks every layer
    before it changes any."""
    max_level(weight_bit_width)
    layers = [(layer, cls) for layer in model.modules() if (cls := _quantized_class(layer)) is not None]
    for layer, _ in layers:
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"{type(layer).__name__} has no dense weight to quantize (already quantized with NF4?)")
        if weight.is_meta:
            raise ValueError("quantize needs loaded weights; this model's are on the meta device (load it first)")
    print_rank0(f"> Quantizing model weight to {weight_bit_width} bits")
    count = 0
    for layer, cls in layers:
        weight = layer.weight
        layer.__class__ = cls  # keeps sizes, stride, gather/parallel flags and init closures
        layer.store_quantized(weight, weight_bit_width)
        count += weight.numel()
    print_rank0(f"> Quantized {count} parameters in total.")
    return model
