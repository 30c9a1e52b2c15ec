"""Checks of what a user passes to the backbone's forward, with errors that name the argument.

Shape checks are free (metadata only). Value checks (ids within the vocabulary, positions within
``max_sequence_length``) need the values: on the CPU they run on the host; elsewhere they are
device-side asserts (``torch._assert_async``), which never wait for the device. Under
``torch.compile`` the value checks are left out, so compiled graphs stay free of host syncs.
"""

from __future__ import annotations

import torch


def check_attention_mask(mask: torch.Tensor, input_ids: torch.Tensor) -> None:
    """A mask tensor must broadcast to ``[batch, heads, seq_q, seq_k]`` the way the layers use it:
    ``[seq_q, seq_k]`` or ``[batch or 1, 1, seq_q or 1, seq_k]`` (1 = attend)."""
    batch, query_length = input_ids.shape[0], input_ids.shape[1]
    shape = tuple(mask.shape)
    if mask.dim() == 2:
        if shape[0] != query_length:
            hint = (
                f" It looks like a [batch, seq] padding mask: pass mask[:, None, None, :] for key padding, "
                f"times torch.tril(torch.ones({query_length}, {query_length})) for causal attention."
                if shape[0] in (1, batch)
                else ""
            )
            raise ValueError(
                f"attention_mask of shape {shape} does not fit input_ids of shape {tuple(input_ids.shape)}: "
                f"a 2-D mask is [seq_q, seq_k] with seq_q = {query_length}.{hint}"
            )
        return
    if mask.dim() != 4 or shape[1] != 1 or shape[0] not in (1, batch) or shape[2] not in (1, query_length):
        raise ValueError(
            f"attention_mask of shape {shape} does not fit input_ids of shape {tuple(input_ids.shape)}: expected "
            f"[seq_q, seq_k] or [batch or 1, 1, seq_q or 1, seq_k] with batch = {batch}, seq_q = {query_length}"
        )


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
