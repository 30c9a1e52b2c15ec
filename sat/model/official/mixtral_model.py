"""Mixtral: LLaMA (RMSNorm, rotary, GQA, untied ``lm`` head) whose MLP is a sparse mixture of
SwiGLU experts, ``num_experts`` of them per layer, ``--num-experts-per-tok`` chosen per token.

The experts are the backbone's (``num_experts``: ``dense_h_to_4h_gate_{i}``, ``dense_h_to_4h_{i}``,
``dense_4h_to_h_{i}``, expert 0 unsuffixed), mixed by the backbone's MoE ``mlp_forward``: a loop
over experts, each computing all its tokens at once (sorted by expert, gathered, ``index_add_``
back). The router is the
``mlp`` mixin's ``routing_forward``, a top-k softmax over one bias-free ``gates[layer]`` linear,
as the original's ``MixtralMlpMixin``. Each layer's router logits ``[b * s, num_experts]`` are
returned as ``output_this_layer["router_logits"]`` for an auxiliary load-balancing loss::

    logits, *per_layer = model(input_ids, position_ids, mask)
    aux = load_balancing_loss(router_logits(per_layer), top_k=args.num_experts_per_tok)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin
from sat.model.official.llama_model import LLaMAModel
from sat.ops.layernorm import RMSNorm

# The original's rotary mixin hard-coded this base and its model_config.json records none.
ORIGINAL_ROTARY_BASE = 1e6


class MixtralMlpMixin(BaseMixin):
    """``routing_forward``: each token's ``top_k`` experts and their renormalised softmax weights."""

    def __init__(self, num_layers: int, in_features: int, num_experts: int, num_experts_per_tok: int):
        super().__init__()
        if not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"num_experts_per_tok ({num_experts_per_tok}) must be in 1..num_experts ({num_experts})")
        self.top_k = num_experts_per_tok
        # Replicated on every model-parallel rank: all ranks route every token the same way.
        self.gates = torch.nn.ModuleList(
            torch.nn.Linear(in_features, num_experts, bias=False) for _ in range(num_layers)
        )

    def routing_forward(self, hidden_states: torch.Tensor, **kw_args) -> tuple[torch.Tensor, torch.Tensor]:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])  # [t, h], t = b * s
        logits = self.gates[kw_args["layer_id"]](flat)  # [t, experts]
        if "output_this_layer" in kw_args:  # absent when an MLP is called outside a layer
            kw_args["output_this_layer"]["router_logits"] = logits
        probs = F.softmax(logits, dim=-1, dtype=torch.float)  # [t, experts]
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [t, k] x2
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(hidden_states.dtype), experts


def router_logits(output_per_layers: Sequence[dict]) -> list[torch.Tensor]:
    """Each layer's router logits ``[b * s, num_experts]`` from ``model(...)[1:]``."""
    return [layer["router_logits"] for layer in output_per_layers]


def load_balancing_loss(
    logits: Sequence[torch.Tensor], top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The Switch-Transformer auxiliary loss, as transformers' Mixtral computes it:
    ``num_experts * sum_e f_e * P_e``, with ``f_e`` the share of top-k assignments that go to
    expert ``e`` and ``P_e`` its mean router probability, over every layer's tokens.

    Args:
        logits: per layer ``[b * s, num_experts]`` (``router_logits(...)``).
        top_k: experts per token.
        attention_mask: ``[b, s]``, 1 for real tokens; padding is left out. ``None``: all count.
    """
    stacked = torch.stack([layer.float() for layer in logits])  # [layers, t, experts]
    num_experts = stacked.shape[-1]
    probs = F.softmax(stacked, dim=-1)
    chosen = F.one_hot(torch.topk(probs, top_k, dim=-1).indices, num_experts).sum(dim=-2)  # [layers, t, experts]
    weight = torch.ones(stacked.shape[1], device=stacked.device) if attention_mask is None else attention_mask
    weight = weight.reshape(1, -1, 1).to(device=stacked.device, dtype=torch.float32)  # [1, t, 1]
    rows = weight.sum() * stacked.shape[0]
    assignments = (chosen * weight).sum(dim=(0, 1)) / rows  # [experts], sums to top_k
    mean_probs = (probs * weight).sum(dim=(0, 1)) / rows  # [experts]
    return num_experts * (assignments * mean_probs).sum()


def adopt_original_rotary_base(model: MixtralModel, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: a checkpoint of the original carries its rotary frequencies of
    base 1e6 but no base in ``model_config.json``; take that base, so that half precision (which
    recomputes the frequencies) and ``sat.hf.to_hf`` (``rope_theta``) agree with the weights."""
    loaded = state_dict.get(prefix + "transformer.position_embeddings.inv_freq")
    rotary = model.transformer.position_embeddings
    if loaded is None or rotary.base == ORIGINAL_ROTARY_BASE:
        return
    exponents = torch.arange(0, rotary.dim, 2, dtype=torch.float32) / rotary.dim
    if torch.allclose(loaded.detach().float().cpu(), 1.0 / ORIGINAL_ROTARY_BASE**exponents, rtol=1e-5, atol=0):
        rotary.base = model.transformer.rotary_base = ORIGINAL_ROTARY_BASE


class MixtralModel(LLaMAModel):
    """LLaMA with ``num_experts`` SwiGLU experts per layer routed by the ``mlp`` mixin."""

    def __init__(self, args, transformer=None, layernorm=RMSNorm, activation_func=F.silu, **kwargs):
        super().__init__(args, transformer=transformer, layernorm=layernorm, activation_func=activation_func, **kwargs)
        self.add_mixin(
            "mlp",
            MixtralMlpMixin(args.num_layers, args.hidden_size, self.transformer.num_experts, args.num_experts_per_tok),
        )
        self.register_load_state_dict_pre_hook(adopt_original_rotary_base)

    @classmethod
    def add_model_specific_args(cls, parser):
        super().add_model_specific_args(parser)
        group = parser.add_argument_group("Mixtral-8x7b", "Mixtral-8x7b Configurations")
        # The backbone's num_experts (ARGS_DEFAULT: 1), on the command line for this model.
        group.add_argument("--num-experts", type=int, default=8, help="experts per layer (Mixtral 8x7B's 8)")
        group.add_argument("--num-experts-per-tok", type=int, default=2, help="experts each token is routed to")
        parser.set_defaults(bos_token_id=1, eos_token_id=2)  # the original's (and Mixtral's) ids
        return parser
