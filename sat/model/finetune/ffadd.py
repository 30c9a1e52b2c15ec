"""FFADD: a low-rank feed-forward block in parallel with each layer's MLP."""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin


class FFADDMixin(BaseMixin):
    """``mlp(x) + up(act(down(x)))`` with ``down: h -> r`` and ``up: r -> h`` (the MLP's own
    activation) in the layers of ``layer_range`` (default: all ``layer_num``).

    Parameters ``ffadd_linear.<layer>.0`` (down) and ``.1`` (up), as in the original; ``up``
    starts at zero, so the model starts equal to the base model. Wraps ``mlp_forward``
    (``@non_conflict``), so it works with dense, gated and mixture-of-experts MLPs.
    """

    def __init__(self, hidden_size: int, layer_num: int = 24, r: int = 0, layer_range: list[int] | None = None):
        super().__init__()
        if r < 1:
            raise ValueError(f"FFADDMixin needs a rank r >= 1, got r={r}")
        self.r = r
        self.layer_range = list(range(layer_num)) if layer_range is None else list(layer_range)
        self.ffadd_linear = torch.nn.ModuleList(torch.nn.ModuleList() for _ in range(layer_num))
        for i in self.layer_range:
            self.ffadd_linear[i].append(torch.nn.Linear(hidden_size, r))
            self.ffadd_linear[i].append(torch.nn.Linear(r, hidden_size))
        self.reinit()

    @torch.no_grad()
    def reinit(self, parent_model=None) -> None:
        for i in self.layer_range:
            self.ffadd_linear[i][0].reset_parameters()
            self.ffadd_linear[i][1].weight.zero_()
            self.ffadd_linear[i][1].bias.zero_()

    @BaseMixin.non_conflict
    def mlp_forward(self, hidden_states, old_impl, expert_id: int = -1, **kw_args) -> torch.Tensor:
        output = old_impl(hidden_states, expert_id=expert_id, **kw_args)  # [b, s, h]
        layer_id = kw_args["layer_id"]
        if expert_id > -1 or not len(self.ffadd_linear[layer_id]):
            return output
        down, up = self.ffadd_linear[layer_id]
        activation = self.transformer.layers[layer_id].mlp.activation_func
        return output + up(activation(down(hidden_states)))
