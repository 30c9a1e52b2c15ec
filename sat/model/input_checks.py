"""Checks of what a user passes to the backbone, with errors that name the argument.

Shape checks are free (metadata only). Value checks (ids within the vocabulary, positions within
``max_sequence_length``) need the values: on the CPU they run on the host; elsewhere they are
device-side asserts (``torch._assert_async``), which never wait for the device. Under
``torch.compile`` the value checks are left out, so compiled graphs stay free of host syncs.
"""

from __future__ import annotations

import torch


def check_attention_mask(mask: torch.Tensor, query_layer: torch.Tensor, key_layer: torch.Tensor) -> None:
    """A caller's mask must broadcast to the scores ``[b, np, sq, sk]`` of the attention that uses
    it (q ``[b, np, sq, hn]``, k ``[b, nkv, sk, hn]``): ``[sq, sk]`` (or ``[1, 1]``: all keys), or
    4-D with each dimension that size or 1 (1 = attend). A 2-D mask's first dimension must be
    ``sq`` itself: a ``[batch, seq]`` padding mask would otherwise broadcast as ``[1, sk]`` and
    silently drop causality."""
    batch, heads, query_length, _ = query_layer.shape
    key_length = key_layer.shape[2]
    shape = tuple(mask.shape)
    if mask.dim() == 2:
        fits = shape == (1, 1) or (shape[0] == query_length and shape[1] in (1, key_length))
        expected = f"[seq_q, seq_k] = [{query_length}, {key_length}]"
    else:
        fits = mask.dim() == 4 and all(
            size in (1, full) for size, full in zip(shape, (batch, heads, query_length, key_length), strict=True)
        )
        expected = (
            f"4-D, broadcastable to [batch, heads, seq_q, seq_k] = [{batch}, {heads}, {query_length}, {key_length}]"
        )
    if fits:
        return
    hint = ""
    if mask.dim() == 2 and shape[0] in (1, batch) and shape[1] == key_length:
        hint = (
            " It looks like a [batch, seq] padding mask: pass mask[:, None, None, :] for key padding, times "
            f"torch.tril(torch.ones({query_length}, {key_length})) for causal attention."
        )
    raise ValueError(f"attention_mask of shape {shape} does not fit the attention: expected {expected}.{hint}")


def check_ids_below(ids: torch.Tensor, limit: int, what: str, setting: str) -> None:
    """``0 <= ids < limit``, else a ``ValueError`` (CPU) or a device-side assert naming ``setting``."""
    if ids.numel() == 0 or torch.compiler.is_compiling():
        return
    message = f"{what} must lie in [0, {limit}) ({setting} = {limit})"
    if ids.device.type == "cpu":
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= limit:
            raise ValueError(f"{message}; got values from {low} to {high}")
        return
    torch._assert_async((ids.min() >= 0) & (ids.max() < limit), message)
