"""Writing one model-parallel rank's checkpoint, ``{"module": state_dict, **entries}``, in the
format asked for: the original's ``.pt`` file, or safetensors (the module's tensors, sharded
past a size) with the other entries beside them in ``.extra.pt`` (see ``layout``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from sat.checkpoint.atomic import atomic_torch_save
from sat.checkpoint.layout import EXTRA_SUFFIX, is_shard_path, split_shard_path
from sat.checkpoint.safetensors_files import safetensors_files, save_safetensors

FORMATS = ("pt", "safetensors")
DEFAULT_MAX_SHARD_SIZE = "5GB"


def checkpoint_format_of(args) -> tuple[str, int | str]:
    """``(args.checkpoint_format, args.max_shard_size)``, defaulting to ``("pt", "5GB")`` for
    args that lack them (built by hand, or saved by an older version)."""
    checkpoint_format = getattr(args, "checkpoint_format", None) or "pt"
    if checkpoint_format not in FORMATS:
        raise ValueError(f"--checkpoint-format must be one of {FORMATS}, got {checkpoint_format!r}")
    return checkpoint_format, getattr(args, "max_shard_size", None) or DEFAULT_MAX_SHARD_SIZE


def write_model_states(
    state: Mapping, path: str, checkpoint_format: str = "pt", max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
) -> None:
    """Write a rank's checkpoint ``state`` where ``path`` (its ``.pt`` name, ``shard_path``) says,
    every file atomically; for safetensors the entries first and the tensors' index last, so the
    index appears only once the rank is complete. Files the other format left for this rank (a
    save over an older one) are removed afterwards."""
    if checkpoint_format not in FORMATS:
        raise ValueError(f"checkpoint_format must be one of {FORMATS}, got {checkpoint_format!r}")
    iteration_dir, stem = split_shard_path(path)
    extra = os.path.join(iteration_dir, stem + EXTRA_SUFFIX)
    if checkpoint_format == "pt":
        atomic_torch_save(dict(state), path)
        stale = [os.path.join(iteration_dir, name) for name in safetensors_files(iteration_dir, stem)] + [extra]
    else:
        module = state["module"]
        odd = [key for key, value in module.items() if not isinstance(value, torch.Tensor)]
        if odd:
            raise ValueError(f"safetensors stores tensors only; the state dict's {odd} are not: save as 'pt'")
        entries = {key: value for key, value in state.items() if key != "module"}
        if entries:
            atomic_torch_save(entries, extra)
        save_safetensors(module, iteration_dir, stem, max_shard_size, metadata={"format": "pt"})
        stale = [path] if entries else [path, extra]
    for name in stale:
        if os.path.isfile(name):
            os.remove(name)


def save_checkpoint_file(
    obj, path: str, checkpoint_format: str = "pt", max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
) -> None:
    """Save ``obj`` at ``path`` atomically: ``write_model_states`` when ``path`` is a rank's model
    file (``mp_rank_XX_model_states.pt``), ``torch.save`` for any other file (DeepSpeed's
    optimizer shards, random states), which stays ``.pt`` in every format."""
    if is_shard_path(path):
        write_model_states(obj, path, checkpoint_format, max_shard_size)
    else:
        atomic_torch_save(obj, path)
