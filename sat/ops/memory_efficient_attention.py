"""``memory_efficient_attention``: the original's xformers kernel call, on SDPA.

SDPA has the memory-efficient kernel (and flash attention) built in, so xformers is never
needed. A full or causal mask the backbone tagged runs as such; any other mask tensor (1 =
attend) goes to SDPA as a boolean mask, where the original raised. A row whose keys are all
masked gives NaN there, where the eager reference attends uniformly.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from sat.ops.attention import DropoutContext, attention_mask_kind, sdpa_attention, sliding_window_mask


def memory_efficient_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_dropout: float = 0.0,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_context: DropoutContext = contextlib.nullcontext,
    sliding_window: int = 0,
) -> torch.Tensor:
    """SDPA on q ``[b, sq, np, hn]``, k and v ``[b, sk, nkv, hn]`` -> ``[b, sq, np, hn]``.

    ``mask`` broadcasts to ``[b, np, sq, sk]`` with 1 = attend (``None``: full attention);
    ``attention_dropout`` is a probability, drawn inside ``dropout_context``;
    ``sliding_window > 0`` limits each query to the keys less than that many positions back
    (``sat.ops.attention.sliding_window_mask``)."""
    query, key, value = (t.transpose(1, 2) for t in (q, k, v))  # [b, n, s, hn]
    kind = attention_mask_kind(mask)
    if kind is not None:
        context = sdpa_attention(
            query,
            key,
            value,
            kind,
            attention_dropout,
            scale,
            dropout_context=dropout_context,
            sliding_window=sliding_window,
        )
    else:
        attend = mask > 0
        if sliding_window and key.shape[2] > sliding_window:
            attend = attend & sliding_window_mask(query.shape[2], key.shape[2], sliding_window, query.device)
        with dropout_context() if attention_dropout > 0 else contextlib.nullcontext():
            context = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attend,
                dropout_p=attention_dropout,
                scale=scale,
                enable_gqa=key.shape[1] != query.shape[1],
            )
    return context.transpose(1, 2)  # [b, sq, np, hn]
