"""QLoRA's frozen base: linear layers whose weight is stored in 4-bit NormalFloat (NF4).

``quantize_linears_nf4(module)`` turns every ``ColumnParallelLinear``/``RowParallelLinear``
inside ``module`` into its ``NF4`` subclass in place: the weight is quantized with
bitsandbytes and the forward multiplies with it directly. The state dict keeps the layer's
names and holds the dequantized ``weight``, so a QLoRA checkpoint loads into a plain model
(and a plain checkpoint into a quantized one, which quantizes what it loads).

bitsandbytes is optional (not a dependency of sat) and its NF4 kernels need CUDA; the
quantized layers skip the model-parallel collectives, so model-parallel size must be 1.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import torch

from sat.mpu import ColumnParallelLinear, RowParallelLinear, get_model_parallel_world_size


def require_bitsandbytes() -> ModuleType:
    """The ``bitsandbytes`` module, or a RuntimeError naming what is missing for NF4."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA device (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes; sat does not install it)")
    if missing:
        raise RuntimeError(
            "qlora=True stores the frozen weights in 4-bit NF4 with bitsandbytes, which needs "
            + " and ".join(missing)
            + ". Use qlora=False for LoRA on unquantized weights."
        )
    import bitsandbytes

    return bitsandbytes


class _NF4Linear:
    """Put in front of ColumnParallelLinear/RowParallelLinear: ``nf4_weight`` (packed) and
    ``nf4_state`` (bitsandbytes' ``QuantState``) replace the ``weight`` parameter."""

    nf4_weight: torch.Tensor
    bias: torch.nn.Parameter | None

    def quantize_(self, weight: torch.Tensor) -> None:
        bnb = require_bitsandbytes()
        packed, self.nf4_state = bnb.functional.quantize_4bit(weight.detach(), quant_type="nf4")
        self.register_buffer("nf4_weight", packed, persistent=False)

    def dense_weight(self) -> torch.Tensor:
        return require_bitsandbytes().functional.dequantize_4bit(self.nf4_weight, self.nf4_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bnb = require_bitsandbytes()
        return bnb.matmul_4bit(x, self.nf4_weight.t(), quant_state=self.nf4_state, bias=self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.dense_weight()

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        if prefix + "weight" in state_dict:
            self.quantize_(state_dict[prefix + "weight"].to(self.nf4_weight.device, self.nf4_state.dtype))
        rest = {key: value for key, value in state_dict.items() if key != prefix + "weight"}
        super()._load_from_state_dict(rest, prefix, *args)


class NF4ColumnParallelLinear(_NF4Linear, ColumnParallelLinear):
    """A ColumnParallelLinear with an NF4 weight (model-parallel size 1)."""


class NF4RowParallelLinear(_NF4Linear, RowParallelLinear):
    """A RowParallelLinear with an NF4 weight (model-parallel size 1)."""


_NF4_OF = {ColumnParallelLinear: NF4ColumnParallelLinear, RowParallelLinear: NF4RowParallelLinear}
_DENSE_OF = {nf4: dense for dense, nf4 in _NF4_OF.items()}


def quantize_linears_nf4(module: torch.nn.Module) -> None:
    """Store the weight of every (unquantized) parallel linear layer inside ``module`` in NF4.
    Checks everything (bitsandbytes, CUDA, model-parallel size, loaded weights) before it
    changes anything."""
    require_bitsandbytes()
    if get_model_parallel_world_size() > 1:
        raise ValueError("qlora=True needs model-parallel size 1: NF4 layers skip the model-parallel collectives")
    layers = [layer for layer in module.modules() if type(layer) in _NF4_OF]
    if any(layer.weight.is_meta for layer in layers):
        raise ValueError("qlora=True quantizes loaded weights: add LoraMixin(qlora=True) after loading the model")
    for layer in layers:
        weight = layer.weight
        del layer.weight
        layer.__class__ = _NF4_OF[type(layer)]
        layer.weight_flags = dict(weight.__dict__)  # model_parallel and similar, for set_dense_weight
        layer.quantize_(weight)


def dense_weight(layer: ColumnParallelLinear | RowParallelLinear) -> torch.Tensor:
    """The layer's weight as a dense tensor (dequantized when it is stored in NF4)."""
    return layer.dense_weight() if isinstance(layer, _NF4Linear) else layer.weight


@torch.no_grad()
def set_dense_weight(layer: ColumnParallelLinear | RowParallelLinear, weight: torch.Tensor) -> None:
    """Give the layer the dense ``weight`` (an NF4 layer becomes its plain class again)."""
    if not isinstance(layer, _NF4Linear):
        layer.weight.copy_(weight.to(layer.weight.dtype))
        return
    dtype = layer.nf4_state.dtype
    del layer.nf4_weight, layer.nf4_state
    layer.__class__ = _DENSE_OF[type(layer)]
    layer.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    layer.weight.__dict__.update(layer.__dict__.pop("weight_flags"))
