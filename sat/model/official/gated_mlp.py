"""Gated MLPs as mixins on a model with a plain MLP: the original's ``LLaMAMlpMixin`` and
``T5GatedGeluMLPMixin``.

The backbone builds a gated MLP itself (``is_gated_mlp``, ``dense_h_to_4h_gate``), which
``LLaMAModel`` and ``T5Model`` use. These mixins give the same computation to any model, the
second ``h -> 4h`` projection of each layer held by the mixin under the original's names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sat.model.base_model import BaseMixin
from sat.mpu import ColumnParallelLinear
from sat.mpu.utils import gelu


def layer_projections(num_layers: int, in_features: int, out_features: int, bias: bool, init_method=None):
    """One column-parallel ``in -> out`` projection per layer, sharded like ``dense_h_to_4h``."""
    kwargs = {} if init_method is None else {"init_method": init_method}
    return torch.nn.ModuleList(
        ColumnParallelLinear(in_features, out_features, bias=bias, gather_output=False, **kwargs)
        for _ in range(num_layers)
    )


def gated_output(mlp: torch.nn.Module, activation: Callable, activated: torch.Tensor, linear: torch.Tensor):
    """``dense_4h_to_h(activation(activated) * linear)``: ``[..., 4h / mp]`` x2 -> ``[..., h]``."""
    return mlp.dense_4h_to_h(activation(activated) * linear)


class LLaMAMlpMixin(BaseMixin):
    """SwiGLU: ``dense_4h_to_h(act(gate_proj(x)) * dense_h_to_4h(x))`` with the layer's own
    activation (SiLU for LLaMA); ``hidden_features`` defaults to ``4 * in_features``."""

    def __init__(self, num_layers: int, in_features: int, hidden_features: int | None):
        super().__init__()
        hidden_features = 4 * in_features if hidden_features is None else hidden_features
        self.gate_proj = layer_projections(num_layers, in_features, hidden_features, bias=False)

    def mlp_forward(self, hidden_states, **kw_args):
        mlp = self.transformer.layers[kw_args["layer_id"]].mlp
        gate = self.gate_proj[kw_args["layer_id"]](hidden_states)
        return gated_output(mlp, mlp.activation_func, gate, mlp.dense_h_to_4h(hidden_states))


class T5GatedGeluMLPMixin(BaseMixin):
    """T5 v1.1's MLP: ``dense_4h_to_h(gelu_tanh(dense_h_to_4h(x)) * gated_h_to_4h_list[l](x))``,
    the extra projections drawn from ``N(0, init_method_std / sqrt(hidden_size))``."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        inner_hidden_size: int | None = None,
        bias: bool = True,
        init_method_std: float = 0.02,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_hidden_size = 4 * hidden_size if inner_hidden_size is None else inner_hidden_size
        self.init_method_std = init_method_std
        self.gated_h_to_4h_list = layer_projections(
            num_layers, hidden_size, self.inner_hidden_size, bias, init_method=self._init_weights
        )

    def _init_weights(self, weight: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.nn.init.normal_(weight, mean=0.0, std=self.init_method_std * self.hidden_size**-0.5)

    def mlp_forward(self, hidden_states, **kw_args):
        mlp = self.transformer.layers[kw_args["layer_id"]].mlp
        linear = self.gated_h_to_4h_list[kw_args["layer_id"]](hidden_states)
        return gated_output(mlp, gelu, mlp.dense_h_to_4h(hidden_states), linear)
