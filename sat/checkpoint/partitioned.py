"""Loading a state dict into a model that ZeRO-3 partitioned as it was built
(``deepspeed.zero.Init``): one submodule's parameters are gathered at a time, rank 0 of their
partition group copies the checkpoint's values in, and they are partitioned again on leaving the
block. No rank ever holds the whole model, and only that rank reads the tensors (their file
pages are handed back once copied)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.page_release import release_pages
from sat.checkpoint.state_dict import apply_load_pre_hooks


def gathered(params: Iterable[torch.nn.Parameter], modifier_rank: int | None = 0) -> contextlib.AbstractContextManager:
    """Whole values of the ZeRO-3-partitioned ones among ``params`` inside the block; at the end
    they are partitioned again, from the values of rank ``modifier_rank`` of each parameter's
    partition group (``None``: read only, nothing sent back). Nothing to do when none is
    partitioned."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    # deepspeed is imported: it partitioned the parameters.
    return sys.modules["deepspeed"].zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def gathered_state_dict(module: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """``module``'s whole state dict on CPU from its ZeRO-3 partitions, gathered one submodule at a
    time (a collective: every rank of the partition groups calls it); only where ``keep`` (the rank
    that writes it) are the tensors copied out, the other ranks return an empty dict."""
    own = module.state_dict(keep_vars=True)
    by_owner: dict[str, list[str]] = {}
    for key in own:
        by_owner.setdefault(key.rpartition(".")[0], []).append(key)
    state = {}
    for keys in by_owner.values():
        with gathered([own[key] for key in keys], modifier_rank=None):
            if keep:
                state.update({key: own[key].detach().cpu().clone() for key in keys})
    return state


def full_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape of a parameter, whole (a ZeRO-3 partitioned one keeps it as ``ds_shape``)."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def _is_modifier(tensor: torch.Tensor) -> bool:
    """Whether this rank's value of ``tensor`` is the one kept: rank 0 of its partition group
    (every rank for a tensor ZeRO-3 does not partition)."""
    group = getattr(tensor, "ds_process_group", None)
    return group is None or dist.get_rank(group) == 0


def load_into_partitions(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load ``state`` (non-strict) into the ZeRO-3-partitioned ``module``, one submodule at a
    time; returns ``(missing, unexpected)`` keys. The ``load_state_dict`` pre-hooks apply first
    and shapes are checked against the whole parameters, on every rank, before anything moves."""
    state = apply_load_pre_hooks(module, state)
    own = module.state_dict(keep_vars=True)
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {full_shape(own[key])}"
        for key, value in state.items()
        if key in own and tuple(value.shape) != full_shape(own[key])
    ]
    if mismatched:
        raise CheckpointError(
            "shape mismatch between checkpoint and the ZeRO-3 model:\n  " + "\n  ".join(mismatched) + "\n(Is the "
            "model configured as the checkpoint was, including model_parallel_size?)"
        )
    for prefix, submodule in module.named_modules():
        direct = {
            f"{prefix}.{name}" if prefix else name: tensor
            for name, tensor in (*submodule._parameters.items(), *submodule._buffers.items())
            if tensor is not None
        }
        direct = {key: tensor for key, tensor in direct.items() if key in state and key in own}
        with gathered(direct.values()), torch.no_grad():
            for key, tensor in direct.items():
                if _is_modifier(tensor):
                    tensor.data.copy_(state[key])
                    release_pages(state[key])  # the file's pages: read once, not kept resident
    return [key for key in own if key not in state], [key for key in state if key not in own]
