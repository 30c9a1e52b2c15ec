"""Attention kernels: the eager reference (``standard_attention``) and SDPA.

Which kernel runs is decided from configuration, never from mask values: the backbone tags
the masks it builds itself (``attention_mask=None`` is "full", ``CAUSAL_MASK`` is "causal"), and
a mask tensor the caller passed carries its SDPA form, converted once per forward
(``user_attention_mask``). Only such a mask, unchanged, may take the SDPA path; a mask a mixin
rebuilt runs the eager path with exactly the original semantics. Reading a tag is a Python
attribute lookup: no device sync, nothing for ``torch.compile`` to trip over.

Dropout here draws from whatever random stream the caller makes current: the caller passes a
``dropout_context`` (the backbone passes the model-parallel one), so kernels know nothing of
model parallelism.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

FULL = "full"
CAUSAL = "causal"
_KIND = "_sat_mask_kind"
_SDPA_FORM = "_sat_sdpa_form"

CAUSAL_MASK = -1
"""``attention_mask=CAUSAL_MASK`` (the original's ``-1``) asks the backbone for causal attention."""

AttentionMask = torch.Tensor | int | None
"""What a model's ``forward`` takes as ``attention_mask``: ``None`` (full attention),
``CAUSAL_MASK``, or a tensor of shape ``[sq, sk]`` or ``[b, 1, sq, sk]`` with 1 = attend."""

DropoutContext = Callable[[], AbstractContextManager]


def full_attention_mask(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``[1, 1]`` all-ones mask for full attention, tagged so SDPA may run it."""
    mask = torch.ones(1, 1, dtype=dtype, device=device)
    setattr(mask, _KIND, FULL)
    return mask


def causal_attention_mask(
    length: int, dtype: torch.dtype, device: torch.device, key_length: int | None = None
) -> torch.Tensor:
    """The ``[length, key_length]`` causal mask (query ``i`` sees keys up to
    ``i + key_length - length``: earlier, cached keys are all visible), tagged so SDPA may
    run it causally."""
    key_length = length if key_length is None else key_length
    mask = torch.ones(length, key_length, dtype=dtype, device=device).tril(key_length - length)
    setattr(mask, _KIND, CAUSAL)
    return mask


def sliding_window_mask(query_length: int, key_length: int, window: int, device: torch.device) -> torch.Tensor:
    """The ``[sq, sk]`` boolean look-back bound of a sliding window of ``window`` keys: query ``i``
    (at position ``i + sk - sq``, aligned to the last key as with cached keys) may see key ``j``
    when ``i + sk - sq - j < window``. It only bounds how far back a query sees: combine it with
    the causal (or any) mask."""
    query_positions = torch.arange(key_length - query_length, key_length, device=device)[:, None]  # [sq, 1]
    return query_positions - torch.arange(key_length, device=device) < window  # [sq, sk]


def first_key_in_window(query_length: int, key_length: int, window: int) -> int:
    """Index of the first of ``key_length`` keys that any of the last ``query_length`` queries can
    see through a sliding window of ``window`` keys: the keys before it can be dropped."""
    return max(0, key_length - query_length - window + 1)


def resolve_attention_mask(
    attention_mask: AttentionMask, query_length: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The mask tensor the layers use for ``attention_mask``, in ``dtype``; the backbone's own
    full and causal masks are tagged so that SDPA may run them."""
    if attention_mask is None:
        return full_attention_mask(dtype, device)
    if isinstance(attention_mask, int):
        if attention_mask != CAUSAL_MASK:
            raise ValueError(f"attention_mask must be None, {CAUSAL_MASK} (causal) or a tensor, got {attention_mask}")
        return causal_attention_mask(query_length, dtype, device)
    if not (attention_mask.dim() == 2 or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1)):
        raise ValueError(
            f"attention_mask must have shape [sq, sk] or [b, 1, sq, sk], got {tuple(attention_mask.shape)}"
        )
    return user_attention_mask(attention_mask, dtype)


def user_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A caller's mask (1 = attend, any value but 0 attends) as the layers get it: in ``dtype``,
    its shape unchanged (what hooks see, as in the original), carrying its SDPA form.

    The SDPA form is computed here, once per forward and on the device: the boolean mask, with
    the rows that attend to nothing opened to every key (SDPA would give NaN there), and a
    ``[..., sq, 1]`` factor in ``dtype``, 0 on those rows and 1 elsewhere, by which
    ``sdpa_attention`` multiplies the queries: a zero query scores every key alike, so the row
    becomes the uniform average of the values, as the eager reference's all ``-10000`` scores
    make it. The caller's tensor itself is never tagged (a new view is).
    """
    converted = mask.to(dtype)
    if converted is mask:
        converted = mask.view_as(mask)
    allowed = mask if mask.dtype == torch.bool else mask != 0  # [..., sq, sk]
    attends = allowed.any(dim=-1, keepdim=True)  # [..., sq, 1]
    setattr(converted, _SDPA_FORM, (allowed | ~attends, attends.to(dtype)))
    return converted


def sdpa_mask_form(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(boolean mask, query factor)`` of a mask from ``user_attention_mask``, else ``None``."""
    return getattr(mask, _SDPA_FORM, None)


def attention_mask_kind(mask: torch.Tensor | None) -> str | None:
    """``"full"`` or ``"causal"`` for a mask the backbone built (or ``None``), else ``None``."""
    if mask is None:
        return FULL
    return getattr(mask, _KIND, None)


def expand_kv_heads(x: torch.Tensor, num_query_heads: int) -> torch.Tensor:
    """Repeat each of the ``[b, nkv, s, hn]`` key/value heads for its group of query heads."""
    b, num_kv_heads, s, hn = x.shape
    if num_kv_heads == num_query_heads:
        return x
    group = num_query_heads // num_kv_heads
    return x[:, :, None].expand(b, num_kv_heads, group, s, hn).reshape(b, num_query_heads, s, hn)


def standard_attention(
    query_layer: torch.Tensor,
    key_layer: torch.Tensor,
    value_layer: torch.Tensor,
    attention_mask: torch.Tensor,
    attention_dropout=None,
    log_attention_weights: torch.Tensor | None = None,
    scaling_attention_score: bool = True,
    dropout_context: DropoutContext = contextlib.nullcontext,
    **kwargs,
) -> torch.Tensor:
    """Eager attention: ``softmax(q k^T / sqrt(hn) + log_w, masked) v``.

    Shapes: q ``[b, np, sq, hn]``, k and v ``[b, np, sk, hn]``, mask broadcastable to
    ``[b, np, sq, sk]`` with 1 = attend. Masked scores become ``-10000`` (the original's
    convention: a fully masked row attends uniformly instead of producing NaN).
    """
    if scaling_attention_score:
        query_layer = query_layer / math.sqrt(query_layer.shape[-1])
    scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))  # [b, np, sq, sk]
    if log_attention_weights is not None:
        scores = scores + log_attention_weights
    scores = scores * attention_mask - 10000.0 * (1.0 - attention_mask)
    probs = F.softmax(scores, dim=-1)
    if attention_dropout is not None:
        with dropout_context():
            probs = attention_dropout(probs)
    return torch.matmul(probs, value_layer)  # [b, np, sq, hn]


def sdpa_attention(
    query_layer: torch.Tensor,
    key_layer: torch.Tensor,
    value_layer: torch.Tensor,
    kind: str,
    dropout_p: float = 0.0,
    scale: float | None = None,
    dropout_context: DropoutContext = contextlib.nullcontext,
    sliding_window: int = 0,
    mask_form: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` for a full or causal mask, or a caller's mask given by
    its ``mask_form`` (``sdpa_mask_form``; ``kind`` is then ignored); K/V may have fewer heads.

    A causal mask with more keys than queries (cached decoding, prefixes) is aligned to the
    last query: query ``i`` sees keys ``j <= i + sk - sq``. ``sliding_window > 0`` further
    limits each query to keys less than ``sliding_window`` positions back
    (``sliding_window_mask``); it does not combine with ``mask_form``.
    """
    if mask_form is not None:
        mask, keep = mask_form  # [..., sq, sk] bool, [..., sq, 1]
        query_layer = query_layer * keep  # zero queries on the rows that attend to nothing
        is_causal = False
    else:
        mask, is_causal = _configured_mask(
            kind, query_layer.shape[-2], key_layer.shape[-2], sliding_window, query_layer.device
        )
    # The fused kernels need unit stride in the last dimension, or SDPA silently falls back
    # to the slow math kernel. Decoding breaks it: sat.ops.linear returns few-row products
    # column-major, and the heads split from them (rotated or not) keep that layout.
    query_layer, key_layer, value_layer = (
        t if t.stride(-1) == 1 else t.contiguous() for t in (query_layer, key_layer, value_layer)
    )
    gqa = key_layer.shape[1] != query_layer.shape[1]
    with dropout_context() if dropout_p > 0 else contextlib.nullcontext():
        return F.scaled_dot_product_attention(
            query_layer,
            key_layer,
            value_layer,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=gqa,
        )  # [b, np, sq, hn]


def _configured_mask(
    kind: str, sq: int, sk: int, sliding_window: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """SDPA's ``(attn_mask, is_causal)`` for a full or causal mask (and a sliding window)."""
    if sliding_window and sk > sliding_window:  # the last query sees key 0 unless windowed
        mask = sliding_window_mask(sq, sk, sliding_window, device)  # [sq, sk]
        return (mask.tril(sk - sq) if kind == CAUSAL else mask), False
    if kind == CAUSAL and sq > 1:
        if sq == sk:
            return None, True
        return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(sk - sq), False
    return None, False
