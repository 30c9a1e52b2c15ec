"""The original's module path, ``sat.quantization.kernels``: the quantized layers and ``quantize``.
The original ran CUDA kernels from ``cpm_kernels``; these are plain PyTorch and also run on CPU."""

from sat.quantization.convert import quantize
from sat.quantization.layers import QuantizedColumnParallelLinear, QuantizedLinear, QuantizedRowParallelLinear

__all__ = ["QuantizedColumnParallelLinear", "QuantizedLinear", "QuantizedRowParallelLinear", "quantize"]
