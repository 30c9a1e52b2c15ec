"""The feed-forward block, dense or gated, with optional mixture-of-experts routing."""

from __future__ import annotations

import torch

from sat.config import TransformerConfig
from sat.model.layers.base import HookedModule, LayerBuild, owned_init
from sat.mpu import ColumnParallelLinear, RowParallelLinear


def _gate(activated: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``activated * linear``. Where autograd keeps neither, the product overwrites
    ``activated`` (the activation's fresh output): one ``[..., 4h]`` tensor less per layer."""
    if activated.requires_grad or linear.requires_grad or activated.dtype != linear.dtype:
        return activated * linear
    return activated.mul_(linear)


class MLP(HookedModule):
    """``dense_h_to_4h`` -> activation -> ``dense_4h_to_h``; optionally gated
    (``dense_h_to_4h_gate``) and with ``num_experts`` copies (suffixed ``_1``, ``_2``...)."""

    def __init__(self, config: TransformerConfig, layer_id: int, build: LayerBuild):
        super().__init__()
        self._attach(build.hooks, build.transformer)
        self.layer_id = layer_id
        self.activation_func = build.activation_func
        self.hidden_size = config.hidden_size
        self.inner_hidden_size = config.inner_hidden_size or 4 * config.hidden_size
        self.is_gated_mlp = config.is_gated_mlp
        self.num_experts = config.num_experts
        bias = config.use_bias or config.use_mlp_bias
        for expert in range(self.num_experts):
            suffix = f"_{expert}" if expert > 0 else ""
            self._add_linear(ColumnParallelLinear, "dense_h_to_4h" + suffix, build, bias, gather_output=False)
            self._add_linear(
                RowParallelLinear,
                "dense_4h_to_h" + suffix,
                build,
                bias,
                input_is_parallel=True,
                final_bias=config.row_parallel_linear_final_bias,
            )
            if self.is_gated_mlp:
                self._add_linear(ColumnParallelLinear, "dense_h_to_4h_gate" + suffix, build, False, gather_output=False)
        self.dropout = torch.nn.Dropout(config.output_dropout_prob)

    def _add_linear(self, linear_cls: type, name: str, build: LayerBuild, bias: bool, **kwargs) -> None:
        into_inner = linear_cls is ColumnParallelLinear
        sizes = (self.hidden_size, self.inner_hidden_size) if into_inner else (self.inner_hidden_size, self.hidden_size)
        init_method = build.init_method if into_inner else build.output_layer_init_method
        layer = linear_cls(
            *sizes, init_method=owned_init(init_method, self, name), bias=bias, **kwargs, **build.linear_kwargs
        )
        self.add_module(name, layer)

    def forward(self, hidden_states: torch.Tensor, **kw_args) -> torch.Tensor:
        output = self.hook("mlp_forward", self.default_forward)(hidden_states, **kw_args)
        if self.training:
            output = self.dropout(output)
        return output

    def default_forward(self, hidden_states: torch.Tensor, expert_id: int = -1, **kw_args) -> torch.Tensor:
        """The default ``mlp_forward``: ``[..., h]`` -> ``[..., h]``.

        Dense: ``dense_4h_to_h(act(dense_h_to_4h(x)))``, or gated
        ``dense_4h_to_h(act(dense_h_to_4h_gate(x)) * dense_h_to_4h(x))``. With ``num_experts > 1``
        (and no ``expert_id``), routes tokens through the ``routing_forward`` hook and mixes the
        experts' outputs, each expert computed through the ``mlp_forward`` hook.
        """
        if self.num_experts > 1 and expert_id == -1:
            return self._mix_experts(hidden_states, **kw_args)
        suffix = f"_{expert_id}" if expert_id > 0 else ""
        intermediate = getattr(self, "dense_h_to_4h" + suffix)(hidden_states)  # [..., 4h / mp]
        if self.is_gated_mlp:
            gate = self.activation_func(getattr(self, "dense_h_to_4h_gate" + suffix)(hidden_states))  # [..., 4h / mp]
            intermediate = _gate(gate, intermediate)
        else:
            intermediate = self.activation_func(intermediate)
        return getattr(self, "dense_4h_to_h" + suffix)(intermediate)  # [..., h]

    def _mix_experts(self, hidden_states: torch.Tensor, **kw_args) -> torch.Tensor:
        expert_forward = self.hook("mlp_forward", self.default_forward)
        weights, experts = self.hook("routing_forward", self.default_routing)(hidden_states, **kw_args)  # [t, k] x2
        batch, seq, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)  # [t, h]
        # Every (token, choice) pair sorted by expert: one gather, one contiguous slice per
        # expert and one scatter, instead of a search, a gather and a scatter for each expert.
        choices = experts.reshape(-1)  # [t * k]
        order = torch.argsort(choices, stable=True)  # [t * k]
        counts = torch.bincount(choices, minlength=self.num_experts).tolist()  # the one host sync
        tokens = order // experts.shape[-1]  # [t * k]: the token of each sorted pair
        chunks = flat[tokens].split(counts)  # per expert [n_e, h]
        outputs = [
            expert_forward(chunk, expert_id=expert, **kw_args) for expert, chunk in enumerate(chunks) if len(chunk)
        ]  # experts no token chose are skipped (the same on every model-parallel rank)
        mixed = torch.cat(outputs) * weights.reshape(-1)[order, None]  # [t * k, h]
        return torch.zeros_like(flat).index_add_(0, tokens, mixed.to(flat.dtype)).view(batch, seq, hidden)

    def default_routing(self, hidden_states: torch.Tensor, **kw_args) -> tuple[torch.Tensor, torch.Tensor]:
        """The default ``routing_forward``: ``[b, s, h]`` -> ``(weights [b*s, k], experts [b*s, k])``.

        The backbone has no router parameters, so every token goes to every expert with equal
        weight (deterministic). Models with a learned router (Mixtral) override it.
        """
        tokens = hidden_states.shape[0] * hidden_states.shape[1]
        experts = torch.arange(self.num_experts, device=hidden_states.device).expand(tokens, self.num_experts)
        weights = hidden_states.new_full((tokens, self.num_experts), 1.0 / self.num_experts)
        return weights, experts
