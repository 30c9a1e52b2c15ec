"""Weight-only quantization in 8 and 4 bits (pure PyTorch, CPU and CUDA): ``quantize(model,
bits)`` replaces a model's parallel linear layers in place (``convert.py``); the layers are in
``layers.py``, the arithmetic in ``packing.py``; ``kernels.py`` is the original's path."""

from sat.quantization.convert import quantize
from sat.quantization.layers import (
    QuantizedColumnParallelLinear,
    QuantizedLinear,
    QuantizedRowParallelLinear,
    linear_weight,
)

__all__ = [
    "QuantizedColumnParallelLinear",
    "QuantizedLinear",
    "QuantizedRowParallelLinear",
    "linear_weight",
    "quantize",
]
