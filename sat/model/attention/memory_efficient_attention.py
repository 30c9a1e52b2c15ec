"""``MemoryEfficientAttentionMixin``: attention through ``scaled_dot_product_attention``.

The original ran xformers' memory-efficient kernel here; these mixins run
``sat.ops.memory_efficient_attention`` (SDPA: no xformers, every mask; see there). The backbone
already takes SDPA for the masks it builds, so the mixins change the kernel only for other masks.
"""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin
from sat.mpu.random import model_parallel_dropout_context
from sat.ops.memory_efficient_attention import memory_efficient_attention as _kernel


def memory_efficient_attention(
    q, k, v, attention_dropout: float = 0.0, mask=None, scale: float | None = None, sliding_window: int = 0
):
    """``sat.ops.memory_efficient_attention`` (``[b, s, n, hn]`` layout) with its dropout drawn
    from the model-parallel random stream, since each model-parallel rank holds other heads."""
    return _kernel(
        q,
        k,
        v,
        attention_dropout,
        mask,
        scale,
        dropout_context=model_parallel_dropout_context,
        sliding_window=sliding_window,
    )


def _dropout_p(attention_dropout) -> float:
    # The backbone passes its Dropout module while training and None in eval.
    return 0.0 if attention_dropout is None else attention_dropout.p


def _no_additive_weights(log_attention_weights) -> None:
    if log_attention_weights is not None:  # the original dropped them without a word
        raise ValueError(
            "MemoryEfficientAttentionMixin takes no log_attention_weights (an additive attention bias); "
            "the default attention_fn applies them"
        )


def _sdpa_sequence_first(
    query,
    key,
    value,
    mask,
    dropout,
    log_attention_weights,
    scaling_attention_score: bool,
    heads_first: bool,
    sliding_window: int = 0,
) -> torch.Tensor:
    """What both mixins' ``attention_fn`` compute: ``memory_efficient_attention`` on q, k, v in
    ``[b, s, n, hn]`` (given ``[b, n, s, hn]`` when ``heads_first``), returning ``[b, sq, np, hn]``;
    ``sliding_window`` is the layer's (the backbone passes it to ``attention_fn``)."""
    _no_additive_weights(log_attention_weights)
    if heads_first:
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # [b, s, n, hn]
    scale = None if scaling_attention_score else 1.0
    return memory_efficient_attention(query, key, value, _dropout_p(dropout), mask, scale, sliding_window)


class MemoryEfficientAttentionMixin(BaseMixin):
    """``attention_fn`` through SDPA; q, k, v ``[b, np, s, hn]`` as the backbone passes them."""

    def attention_fn(
        self,
        query_layer,
        key_layer,
        value_layer,
        attention_mask,
        attention_dropout=None,
        log_attention_weights=None,
        scaling_attention_score=True,
        **kw_args,
    ):
        context = _sdpa_sequence_first(
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            attention_dropout,
            log_attention_weights,
            scaling_attention_score,
            heads_first=True,
            sliding_window=kw_args.get("sliding_window", 0),
        )
        return context.transpose(1, 2)  # [b, np, sq, hn]


class TransposedMemoryEfficientAttentionMixin(BaseMixin):
    """Attention in the ``[b, s, np, hn]`` layout: ``attention_forward`` hands its
    ``attention_fn`` q, k, v in that layout, so a mixin's ``attention_fn`` that expects
    ``[b, np, s, hn]`` does not fit beside it (the original warned about the same).
    Cross-attention keeps the backbone's layout (the original mixed the two up there)."""

    def attention_fn(
        self,
        query_layer,
        key_layer,
        value_layer,
        attention_mask,
        attention_dropout=None,
        log_attention_weights=None,
        scaling_attention_score=True,
        **kw_args,
    ):
        # The backbone's cross-attention calls this hook too, in its own [b, np, s, hn] layout.
        heads_first = kw_args.get("cross_attention", False)
        context = _sdpa_sequence_first(
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            attention_dropout,
            log_attention_weights,
            scaling_attention_score,
            heads_first,
            kw_args.get("sliding_window", 0),
        )  # [b, sq, np, hn]
        return context.transpose(1, 2) if heads_first else context

    def attention_forward(self, hidden_states, mask, **kw_args):
        attention = self.transformer.layers[kw_args["layer_id"]].attention
        query, key, value = (t.transpose(1, 2) for t in attention.heads(hidden_states, **kw_args))  # [b, s, n, hn]
        dropout_fn = attention.attention_dropout if attention.training else None
        window = attention.sliding_window  # what the layer passes to attention_fn (attend)
        # [b, sq, np, hn]
        context = self.attention_fn(query, key, value, mask, dropout_fn, **kw_args, sliding_window=window)
        return attention.project(context)
