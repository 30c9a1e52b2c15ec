"""The hook registry: every hook's name, call signature and default implementation.

The backbone calls nine hooks. A model or mixin overrides one by defining a method with the
hook's name; the default runs otherwise. Each default computation is a method of the module
that owns its parameters (``SelfAttention.default_forward``, ``MLP.default_routing``,
``BaseTransformer.default_final``...); the functions here are the original's public form of
those defaults: every one except ``attention_fn`` takes ``self``, any object with a
``.transformer`` attribute (the model, a mixin), and finds the module of layer
``kw_args['layer_id']`` itself, so a mixin can call ``HOOKS_DEFAULT[name](self, ...)`` or get it
as ``old_impl``.

``**kw_args`` carries everything the caller of ``model(...)`` passed beyond the three
positional inputs (``token_type_ids``, ``mems``, ``encoder_outputs``...) to every hook, plus,
inside layers, ``layer_id`` (an ``int``), ``position_ids``, ``output_this_layer`` (a dict whose
entries are returned as that layer's outputs) and ``output_cross_layer`` (a dict whose entries
become keyword arguments of the next layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sat.model.layers import BaseTransformerLayer, attention_fn_default

__all__ = ["HOOKS_DEFAULT", "HOOK_SPECS", "HookSpec", "attention_fn_default"]


def _layer(self, kw_args: dict) -> BaseTransformerLayer:
    return self.transformer.layers[kw_args["layer_id"]]


def attention_forward_default(self, hidden_states: torch.Tensor, mask: torch.Tensor, **kw_args) -> torch.Tensor:
    """Self-attention of layer ``layer_id`` (``SelfAttention.default_forward``)."""
    return _layer(self, kw_args).attention.default_forward(hidden_states, mask, **kw_args)


def cross_attention_forward_default(
    self, hidden_states: torch.Tensor, cross_attention_mask: torch.Tensor, encoder_outputs, **kw_args
) -> torch.Tensor:
    """Cross-attention of decoder layer ``layer_id`` (``CrossAttention.default_forward``)."""
    attention = _layer(self, kw_args).cross_attention
    return attention.default_forward(hidden_states, cross_attention_mask, encoder_outputs, **kw_args)


def routing_forward_default(self, hidden_states: torch.Tensor, **kw_args) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture-of-experts router of layer ``layer_id`` (``MLP.default_routing``)."""
    return _layer(self, kw_args).mlp.default_routing(hidden_states, **kw_args)


def mlp_forward_default(self, hidden_states: torch.Tensor, expert_id: int = -1, **kw_args) -> torch.Tensor:
    """MLP of layer ``layer_id`` (``MLP.default_forward``)."""
    return _layer(self, kw_args).mlp.default_forward(hidden_states, expert_id=expert_id, **kw_args)


def word_embedding_forward_default(self, input_ids: torch.Tensor, output_cross_layer: dict, **kw_args) -> torch.Tensor:
    """Token embedding (``BaseTransformer.default_word_embedding``)."""
    return self.transformer.default_word_embedding(input_ids, output_cross_layer, **kw_args)


def position_embedding_forward_default(
    self, position_ids: torch.Tensor, output_cross_layer: dict, **kw_args
) -> torch.Tensor | None:
    """Absolute position embedding, or ``None`` with rotary (``BaseTransformer.default_position_embedding``)."""
    return self.transformer.default_position_embedding(position_ids, output_cross_layer, **kw_args)


def final_forward_default(self, logits: torch.Tensor, **kw_args) -> torch.Tensor:
    """Output head (``BaseTransformer.default_final``)."""
    return self.transformer.default_final(logits, **kw_args)


def layer_forward_default(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
    """One transformer layer (``BaseTransformerLayer.default_forward``)."""
    return _layer(self, kw_args).default_forward(hidden_states, mask, *args, **kw_args)


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
