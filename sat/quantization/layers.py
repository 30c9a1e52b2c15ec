"""Linear layers whose weight is stored as 8- or 4-bit integers with one scale per output row
(``sat.quantization.packing``). The forward dequantizes the weight into the activation's dtype
and multiplies as the float layer does, collectives included.

State-dict keys: ``weight`` (``int8``, ``[out, in]`` or ``[out, in / 2]``), ``weight_scale``
(``[out]``, the float weight's dtype) and ``bias``, as in the original. A model-parallel layer
keeps its shard: a column-parallel weight and scale stay split along the output dimension (with
the layer's stride); a row-parallel shard holds part of each row, so its scale is taken over the
whole row (an all-reduce of the shards' maxima) and is the same on every rank, which keeps the
integers independent of the model-parallel size and the checkpoint reshardable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from sat.mpu import ColumnParallelLinear, RowParallelLinear, get_model_parallel_group, get_model_parallel_world_size
from sat.mpu.partition import mark_partitioned, mark_replicated
from sat.quantization.packing import absmax_scale, dequantize_weight, quantize_weight


def linear_weight(layer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The weight ``[out, in]`` of a linear layer, for code that multiplies with it directly (an
    output head): dequantized into ``dtype`` for a quantized layer, else the parameter itself."""
    return layer.dequantized_weight(dtype) if isinstance(layer, QuantizedWeight) else layer.weight


def _in_dtype(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(dtype)


class QuantizedWeight:
    """Put in front of a linear layer class: ``weight`` (integers) and ``weight_scale`` replace
    the float ``weight``. ``partition_dim`` is the split dimension (None: not model-parallel)."""

    weight_bit_width: int
    weight: Parameter
    weight_scale: Parameter
    bias: Parameter | None
    partition_dim: int | None = None
    stride: int = 1

    @torch.no_grad()
    def store_quantized(self, weight: torch.Tensor, weight_bit_width: int) -> None:
        """Quantize ``weight [out, in]`` (this rank's shard) into this layer's parameters."""
        absmax = weight.detach().abs().amax(dim=-1).float()  # [out]
        if self.partition_dim == 1 and get_model_parallel_world_size() > 1:
            dist.all_reduce(absmax, op=dist.ReduceOp.MAX, group=get_model_parallel_group())
        scale = absmax_scale(absmax, weight_bit_width, weight.dtype)  # [out]
        self.weight_bit_width = weight_bit_width
        self.weight = Parameter(quantize_weight(weight, scale, weight_bit_width), requires_grad=False)
        self.weight_scale = Parameter(scale, requires_grad=False)
        if self.partition_dim == 0:
            mark_partitioned(self.weight, 0, self.stride)
            mark_partitioned(self.weight_scale, 0, self.stride)
        elif self.partition_dim == 1:
            mark_partitioned(self.weight, 1)
            mark_replicated(self.weight_scale)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """This rank's dense weight ``[out, in]`` in ``dtype``."""
        return dequantize_weight(self.weight, self.weight_scale, self.weight_bit_width, dtype)

    def repartition(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot change its model-parallel size: split the float model "
            "(sat.mpu.mp_split_model) first, then quantize it"
        )


class QuantizedLinear(QuantizedWeight, torch.nn.Linear):
    """A ``torch.nn.Linear`` with a quantized weight: ``QuantizedLinear(bits, weight_tensor,
    bias_tensor, in_features=..., out_features=..., ...)`` (the original's signature); without
    ``weight_tensor`` (or with ``empty_init``) the layer's own initial weight is quantized."""

    def __init__(
        self,
        weight_bit_width: int,
        weight_tensor: torch.Tensor | None = None,
        bias_tensor: torch.Tensor | None = None,
        empty_init: bool = False,
        *args,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.store_quantized(self.weight if weight_tensor is None or empty_init else weight_tensor, weight_bit_width)
        if bias_tensor is not None:
            self.bias = Parameter(bias_tensor.to(self.weight.device), requires_grad=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.dequantized_weight(input.dtype), _in_dtype(self.bias, input.dtype))


class _QuantizedParallelLinear(QuantizedWeight):
    """The constructor and forward both quantized parallel layers share. ``weight`` (default: the
    layer's own) is this rank's float shard; ``bias_val`` replaces the bias (the original's
    signature)."""

    def __init__(
        self, weight_bit_width: int, weight: torch.Tensor | None = None, *args, bias_val=None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.store_quantized(self.weight if weight is None else weight, weight_bit_width)
        if bias_val is not None:
            self.bias = bias_val

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        return self.forward_with(input_, self.dequantized_weight(input_.dtype), _in_dtype(self.bias, input_.dtype))


class QuantizedColumnParallelLinear(_QuantizedParallelLinear, ColumnParallelLinear):
    """A ``ColumnParallelLinear`` with a quantized weight (see ``_QuantizedParallelLinear``)."""

    partition_dim = 0


class QuantizedRowParallelLinear(_QuantizedParallelLinear, RowParallelLinear):
    """A ``RowParallelLinear`` with a quantized weight (see ``_QuantizedParallelLinear``)."""

    partition_dim = 1
