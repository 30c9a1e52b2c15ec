"""Houlsby adapters: a small bottleneck MLP on the output of each attention and MLP block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin


def _linears(in_features: int, out_features: int, count: int) -> torch.nn.ModuleList:
    return torch.nn.ModuleList(torch.nn.Linear(in_features, out_features) for _ in range(count))


class AdapterMixin(BaseMixin):
    """``y + ff2(gelu(ff1(y)))`` on every layer's self-attention output ``y`` and
    ``y + ff4(gelu(ff3(y)))`` on its MLP output (Houlsby et al., 2019).

    The adapters wrap the ``attention_forward`` and ``mlp_forward`` hooks (``@non_conflict``),
    so they sit before the residual connection in every layer order (pre-LN, post-LN,
    sandwich, decoder layers) and compose with other mixins on those hooks. ``reinit`` gives
    the near-zero initialisation of the paper (std 1e-3, zero bias), so the model starts close
    to the base model.
    """

    def __init__(self, num_layers: int, hidden_size: int, adapter_hidden: int):
        super().__init__()
        self.ff1 = _linears(hidden_size, adapter_hidden, num_layers)
        self.ff2 = _linears(adapter_hidden, hidden_size, num_layers)
        self.ff3 = _linears(hidden_size, adapter_hidden, num_layers)
        self.ff4 = _linears(adapter_hidden, hidden_size, num_layers)

    @BaseMixin.non_conflict
    def attention_forward(self, hidden_states, mask, old_impl, **kw_args) -> torch.Tensor:
        output = old_impl(hidden_states, mask, **kw_args)  # [b, s, h]
        layer_id = kw_args["layer_id"]
        return output + self.ff2[layer_id](F.gelu(self.ff1[layer_id](output)))

    @BaseMixin.non_conflict
    def mlp_forward(self, hidden_states, old_impl, expert_id: int = -1, **kw_args) -> torch.Tensor:
        output = old_impl(hidden_states, expert_id=expert_id, **kw_args)  # [b, s, h]
        if expert_id > -1:  # one expert of a mixture: adapt the mixed output only
            return output
        layer_id = kw_args["layer_id"]
        return output + self.ff4[layer_id](F.gelu(self.ff3[layer_id](output)))

    @torch.no_grad()
    def reinit(self, parent_model=None) -> None:
        for linear in (*self.ff1, *self.ff2, *self.ff3, *self.ff4):
            torch.nn.init.trunc_normal_(linear.weight, std=1e-3)
            linear.bias.zero_()
