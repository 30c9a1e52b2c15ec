"""The hook registry: every hook's name, call signature and default implementation.

The backbone calls nine hooks. A model or mixin overrides one by defining a method with the
hook's name; the default below runs otherwise. Every default except ``attention_fn`` takes
``self``: any object with a ``.transformer`` attribute (the model, a mixin, or a backbone
module); it finds its layer as ``self.transformer.layers[kw_args['layer_id']]``.

``**kw_args`` carries everything the caller of ``model(...)`` passed beyond the three
positional inputs (``token_type_ids``, ``mems``, ``encoder_outputs``...) to every hook, plus,
inside layers, ``layer_id`` (an ``int``), ``position_ids``, ``output_this_layer`` (a dict whose
entries are returned as that layer's outputs) and ``output_cross_layer`` (a dict whose entries
become keyword arguments of the next layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from sat.mpu import vocab_parallel_logits
from sat.mpu.utils import split_tensor_along_last_dim
from sat.ops.attention import (
    attention_mask_kind,
    expand_kv_heads,
    sdpa_attention,
    standard_attention,
)
from sat.ops.layernorm import LayerNorm, RMSNorm

__all__ = [
    "ARGS_DEFAULT",
    "HOOKS_DEFAULT",
    "HOOK_SPECS",
    "NO_WD_MODULES",
    "HookSpec",
    "standard_attention",
]


def attention_fn_default(
    query_layer: torch.Tensor,
    key_layer: torch.Tensor,
    value_layer: torch.Tensor,
    attention_mask: torch.Tensor | None,
    attention_dropout=None,
    log_attention_weights: torch.Tensor | None = None,
    scaling_attention_score: bool = True,
    **kwargs,
) -> torch.Tensor:
    """Attention proper: q ``[b, np, sq, hn]``, k/v ``[b, nkv, sk, hn]`` (``nkv`` divides ``np``:
    MQA/GQA), mask broadcastable to ``[b, np, sq, sk]`` (1 = attend) -> ``[b, np, sq, hn]``.

    Runs SDPA when the mask is one the backbone built (full or causal) and no additive
    ``log_attention_weights`` or custom dropout is involved; the eager ``standard_attention``
    otherwise.
    """
    kind = attention_mask_kind(attention_mask)
    plain_dropout = attention_dropout is None or isinstance(attention_dropout, torch.nn.Dropout)
    if kind is not None and log_attention_weights is None and plain_dropout:
        dropout_p = attention_dropout.p if attention_dropout is not None and attention_dropout.training else 0.0
        scale = None if scaling_attention_score else 1.0
        return sdpa_attention(query_layer, key_layer, value_layer, kind, dropout_p=dropout_p, scale=scale)
    num_query_heads = query_layer.shape[1]
    return standard_attention(
        query_layer,
        expand_kv_heads(key_layer, num_query_heads),
        expand_kv_heads(value_layer, num_query_heads),
        attention_mask,
        attention_dropout=attention_dropout,
        log_attention_weights=log_attention_weights,
        scaling_attention_score=scaling_attention_score,
        **kwargs,
    )


def _merge_heads(context: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, head_size = context.shape
    return context.transpose(1, 2).reshape(batch, seq, heads * head_size)  # [b, s, np hn]


def attention_forward_default(self, hidden_states: torch.Tensor, mask: torch.Tensor, **kw_args) -> torch.Tensor:
    """Self-attention of layer ``layer_id``: ``[b, s, h]`` -> ``[b, s, h]``.

    Fused QKV projection, optional built-in rotary embedding, the ``attention_fn`` hook, then
    the output projection.
    """
    attention = self.transformer.layers[kw_args["layer_id"]].attention
    attention_fn = attention.hooks.get("attention_fn", attention_fn_default)
    mixed = attention.query_key_value(hidden_states)  # [b, s, (np + 2 nkv) hn / mp]
    query, key, value = split_tensor_along_last_dim(mixed, attention.stride)
    query = attention._transpose_for_scores(query)  # [b, np, s, hn]
    key = attention._transpose_for_scores(key)  # [b, nkv, s, hn]
    value = attention._transpose_for_scores(value)  # [b, nkv, s, hn]
    if attention.transformer.is_rotary_emb:
        query, key = attention.transformer.position_embeddings(
            query, key, kw_args["position_ids"], layer_id=kw_args["layer_id"]
        )
    dropout_fn = attention.attention_dropout if attention.training else None
    context = attention_fn(query, key, value, mask, dropout_fn, **kw_args)  # [b, np, s, hn]
    output = attention.dense(_merge_heads(context))  # [b, s, h]
    if attention.training:
        output = attention.output_dropout(output)
    return output


def cross_attention_forward_default(
    self, hidden_states: torch.Tensor, cross_attention_mask: torch.Tensor, encoder_outputs, **kw_args
) -> torch.Tensor:
    """Cross-attention of decoder layer ``layer_id``: queries from ``hidden_states [b, s, h]``,
    keys/values from ``encoder_outputs [b, se, h_enc]`` or, when it is a per-layer list of
    cached ``(k, v)`` pairs, from ``encoder_outputs[layer_id]``. Returns ``[b, s, h]``.

    Calls ``attention_fn`` with ``cross_attention=True`` and ``mem_cross=(k, v)``.
    """
    attention = self.transformer.layers[kw_args["layer_id"]].cross_attention
    attention_fn = attention.hooks.get("attention_fn", attention_fn_default)
    query = attention._transpose_for_scores(attention.query(hidden_states))  # [b, np, s, hn]
    if isinstance(encoder_outputs, torch.Tensor):
        key, value = split_tensor_along_last_dim(attention.key_value(encoder_outputs), 2)
        key = attention._transpose_for_scores(key)  # [b, nkv, se, hn]
        value = attention._transpose_for_scores(value)
    else:
        key, value = encoder_outputs[kw_args["layer_id"]]
    dropout_fn = attention.attention_dropout if attention.training else None
    context = attention_fn(
        query,
        key,
        value,
        cross_attention_mask,
        dropout_fn,
        cross_attention=True,
        mem_cross=(key, value),
        **kw_args,
    )  # [b, np, s, hn]
    output = attention.dense(_merge_heads(context))  # [b, s, h]
    if attention.training:
        output = attention.output_dropout(output)
    return output


def routing_forward_default(self, hidden_states: torch.Tensor, **kw_args) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture-of-experts router: ``[b, s, h]`` -> ``(weights [b*s, k], experts [b*s, k])``.

    The backbone has no router parameters, so the default sends every token to every expert
    with equal weight (deterministic). Models with a learned router (Mixtral) override it.
    """
    num_experts = self.transformer.num_experts
    tokens = hidden_states.shape[0] * hidden_states.shape[1]
    experts = torch.arange(num_experts, device=hidden_states.device).expand(tokens, num_experts)
    weights = hidden_states.new_full((tokens, num_experts), 1.0 / num_experts)
    return weights, experts


def _gate(activated: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``activated * linear``. Where autograd keeps neither, the product overwrites
    ``activated`` (the activation's fresh output): one ``[..., 4h]`` tensor less per layer."""
    if activated.requires_grad or linear.requires_grad or activated.dtype != linear.dtype:
        return activated * linear
    return activated.mul_(linear)


def mlp_forward_default(self, hidden_states: torch.Tensor, expert_id: int = -1, **kw_args) -> torch.Tensor:
    """MLP of layer ``layer_id``: ``[..., h]`` -> ``[..., h]``.

    Dense: ``dense_4h_to_h(act(dense_h_to_4h(x)))``, or gated
    ``dense_4h_to_h(act(dense_h_to_4h_gate(x)) * dense_h_to_4h(x))``. With ``num_experts > 1``
    (and no ``expert_id``), routes tokens through the ``routing_forward`` hook and mixes the
    experts' outputs; expert ``i > 0`` uses the weights suffixed ``_i``.
    """
    mlp = self.transformer.layers[kw_args["layer_id"]].mlp
    if mlp.num_experts == 1 or expert_id > -1:
        suffix = f"_{expert_id}" if expert_id > 0 else ""
        intermediate = getattr(mlp, "dense_h_to_4h" + suffix)(hidden_states)  # [..., 4h / mp]
        if mlp.is_gated_mlp:
            gate = mlp.activation_func(getattr(mlp, "dense_h_to_4h_gate" + suffix)(hidden_states))  # [..., 4h / mp]
            intermediate = _gate(gate, intermediate)
        else:
            intermediate = mlp.activation_func(intermediate)
        return getattr(mlp, "dense_4h_to_h" + suffix)(intermediate)

    expert_forward = mlp.hooks.get("mlp_forward", partial(mlp_forward_default, self))
    routing_forward = mlp.hooks.get("routing_forward", partial(routing_forward_default, self))
    weights, experts = routing_forward(hidden_states, **kw_args)  # [t, k], [t, k]
    batch, seq, hidden = hidden_states.shape
    flat = hidden_states.reshape(-1, hidden)  # [t, h]
    output = torch.zeros_like(flat)
    for expert in range(mlp.num_experts):
        token_idx, slot = torch.where(experts == expert)
        if token_idx.numel() == 0:
            continue
        expert_out = expert_forward(flat[token_idx], expert_id=expert, **kw_args)  # [n, h]
        output.index_add_(0, token_idx, (expert_out * weights[token_idx, slot, None]).to(flat.dtype))
    return output.view(batch, seq, hidden)


def word_embedding_forward_default(self, input_ids: torch.Tensor, output_cross_layer: dict, **kw_args) -> torch.Tensor:
    """Token embedding: ``input_ids [b, s]`` -> ``[b, s, h]``."""
    return self.transformer.word_embeddings(input_ids)


def position_embedding_forward_default(
    self, position_ids: torch.Tensor, output_cross_layer: dict, **kw_args
) -> torch.Tensor | None:
    """Absolute position embedding ``position_ids [b, s]`` -> ``[b, s, h]``, or ``None`` (nothing
    is added) when the backbone applies rotary embeddings inside attention."""
    if self.transformer.is_rotary_emb:
        return None
    return self.transformer.position_embeddings(position_ids)


def final_forward_default(self, logits: torch.Tensor, **kw_args) -> torch.Tensor:
    """Output head on the final hidden states ``[b, s, h]`` -> ``[b, s, vocab]``: the tied word
    embedding. Gathers the model-parallel vocabulary shards unless ``parallel_output``."""
    return vocab_parallel_logits(logits, self.transformer.word_embeddings.weight, kw_args["parallel_output"])


def _drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    # Stochastic depth: drop the whole branch for a sample with probability p.
    keep = (torch.rand(x.shape[0], dtype=x.dtype, device=x.device) + (1 - p)).floor_() / (1 - p)
    return x * keep.view(-1, *([1] * (x.dim() - 1)))


def layer_forward_default(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
    """One transformer layer: ``[b, s, h]`` -> ``[b, s, h]``.

    ``pre`` (and ``sandwich``, which adds a norm after each branch): ``x + attn(ln(x))``, then
    the same with the MLP. ``post``: ``y = ln_in(x); y = ln_post(y + attn(y))``, output
    ``y + mlp(y)``. Decoder layers with ``encoder_outputs`` add cross-attention between the two.
    """
    layer = self.transformer.layers[kw_args["layer_id"]]
    attention_input = layer.input_layernorm(hidden_states)
    attention_output = layer.attention(attention_input, mask, **kw_args)
    if layer.layernorm_order == "sandwich":
        attention_output = layer.third_layernorm(attention_output)
    if layer.training and layer.drop_path > 0.0:
        attention_output = _drop_path(attention_output, layer.drop_path)

    if layer.layernorm_order == "post":
        hidden_states = attention_input + attention_output
        mlp_input = layer.post_attention_layernorm(hidden_states)
    else:
        hidden_states = hidden_states + attention_output

    if layer.is_decoder and kw_args.get("encoder_outputs") is not None:
        if layer.layernorm_order == "post":
            hidden_states = mlp_input + layer.cross_attention(mlp_input, **kw_args)
            mlp_input = layer.post_cross_attention_layernorm(hidden_states)
        else:
            cross_input = layer.post_cross_attention_layernorm(hidden_states)
            hidden_states = hidden_states + layer.cross_attention(cross_input, **kw_args)

    if layer.layernorm_order != "post":
        mlp_input = layer.post_attention_layernorm(hidden_states)
    mlp_output = layer.mlp(mlp_input, **kw_args)
    if layer.layernorm_order == "sandwich":
        mlp_output = layer.fourth_layernorm(mlp_output)
    if layer.training and layer.drop_path > 0.0:
        mlp_output = _drop_path(mlp_output, layer.drop_path)

    if layer.layernorm_order == "post":
        return mlp_input + mlp_output
    return hidden_states + mlp_output


@dataclass(frozen=True)
class HookSpec:
    """How the backbone calls a hook.

    Attributes:
        name: the method name a model or mixin defines to override the hook.
        default: the implementation used when nobody overrides it.
        positional: arguments passed positionally (after ``self``), in order.
        keywords: keyword arguments always passed, besides the caller's ``**kw_args``.
        takes_self: False only for ``attention_fn``, whose default is a plain function.
    """

    name: str
    default: Callable
    positional: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    takes_self: bool = True

    @property
    def signature(self) -> str:
        params = ([] if not self.takes_self else ["self"]) + list(self.positional)
        params += [f"{k}=..." for k in self.keywords] + ["**kw_args"]
        return f"{self.name}({', '.join(params)})"


_LAYER_KEYWORDS = ("layer_id", "position_ids", "output_this_layer", "output_cross_layer")

HOOK_SPECS: dict[str, HookSpec] = {
    spec.name: spec
    for spec in (
        HookSpec(
            "attention_fn",
            attention_fn_default,
            ("query_layer", "key_layer", "value_layer", "attention_mask", "attention_dropout"),
            _LAYER_KEYWORDS,
            takes_self=False,
        ),
        HookSpec("attention_forward", attention_forward_default, ("hidden_states", "mask"), _LAYER_KEYWORDS),
        HookSpec(
            "cross_attention_forward",
            cross_attention_forward_default,
            ("hidden_states", "cross_attention_mask", "encoder_outputs"),
            _LAYER_KEYWORDS,
        ),
        HookSpec("routing_forward", routing_forward_default, ("hidden_states",), _LAYER_KEYWORDS),
        HookSpec("mlp_forward", mlp_forward_default, ("hidden_states",), _LAYER_KEYWORDS),
        HookSpec("word_embedding_forward", word_embedding_forward_default, ("input_ids",), ("output_cross_layer",)),
        HookSpec(
            "position_embedding_forward",
            position_embedding_forward_default,
            ("position_ids",),
            ("output_cross_layer",),
        ),
        HookSpec("final_forward", final_forward_default, ("logits",), ("parallel_output",)),
        HookSpec("layer_forward", layer_forward_default, ("hidden_states", "mask"), _LAYER_KEYWORDS),
    )
}

HOOKS_DEFAULT: dict[str, Callable] = {name: spec.default for name, spec in HOOK_SPECS.items()}

# Constructor keyword of BaseTransformer -> (attribute of args, default when args lacks it).
ARGS_DEFAULT: dict[str, tuple[str, object]] = {
    "embedding_dropout_prob": ("hidden_dropout", 0),
    "attention_dropout_prob": ("attention_dropout", 0),
    "output_dropout_prob": ("hidden_dropout", 0),
    "inner_hidden_size": ("inner_hidden_size", None),
    "hidden_size_per_attention_head": ("hidden_size_per_attention_head", None),
    "cross_hidden_size_per_attention_head": ("cross_hidden_size_per_attention_head", None),
    "checkpoint_activations": ("checkpoint_activations", False),
    "checkpoint_num_layers": ("checkpoint_num_layers", 1),
    "checkpoint_skip_layers": ("checkpoint_skip_layers", 0),
    "is_decoder": ("is_decoder", False),
    "cross_attn_hidden_size": ("cross_attn_hidden_size", None),
    "use_final_layernorm": ("use_final_layernorm", True),
    "layernorm_epsilon": ("layernorm_epsilon", 1e-5),
    "use_bias": ("use_bias", True),
    "use_qkv_bias": ("use_qkv_bias", False),
    "num_multi_query_heads": ("num_multi_query_heads", 0),
    "cross_num_multi_query_heads": ("cross_num_multi_query_heads", 0),
    "drop_path": ("drop_path", 0.0),
    "row_parallel_linear_final_bias": ("row_parallel_linear_final_bias", True),
    "is_gated_mlp": ("is_gated_mlp", False),
    "is_rotary_emb": ("is_rotary_emb", False),
    "rotary_base": ("rotary_base", 10000.0),
    "parallel_output": ("parallel_output", False),
    "num_experts": ("num_experts", 1),
}

# Modules whose parameters get no weight decay.
NO_WD_MODULES = [LayerNorm, torch.nn.LayerNorm, RMSNorm]
