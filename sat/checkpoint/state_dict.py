"""Loading a state dict into a module, including one built on the ``meta`` device
(``skip_init``): the checkpoint's tensors become its weights, without a second copy."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sat.checkpoint.conversion import convert_tensor
from sat.checkpoint.destinations import Destinations
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.page_release import ReadAhead
from sat.helpers import progress


def unwrap_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DeepSpeed engine (or a DDP wrapper); ``model`` itself otherwise."""
    return model.module if hasattr(model, "module") else model


def _locate(module: torch.nn.Module, key: str) -> tuple[torch.nn.Module, str]:
    owner_path, _, name = key.rpartition(".")
    return (module.get_submodule(owner_path) if owner_path else module), name


def tensor_at(module: torch.nn.Module, key: str) -> torch.Tensor:
    """The parameter or buffer of ``module`` that state-dict key ``key`` names."""
    owner, name = _locate(module, key)
    return owner._parameters[name] if name in owner._parameters else owner._buffers[name]


def _set_tensor(owner: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name] = value
    else:
        owner._buffers[name] = value


def _assign_meta(module: torch.nn.Module, state: Mapping, keys: list[str], device: torch.device | Destinations) -> None:
    """Put checkpoint tensors in place of ``meta`` parameters (no copy when dtype and device
    already match), keeping each parameter's flags and any sharing between modules. Each tensor
    is converted to its parameter's dtype on its own (``convert_tensor``): the model never exists
    twice. With ``Destinations``, each goes to its module's device, or to the offload folder
    (its parameter stays on ``meta``).

    Two parameters the model keeps apart never end up on one storage, even where the source
    held one tensor for both (a tied HF embedding and sat's own ``lm_head``): the second gets a
    copy, so training updates them separately, as it would after a save and reload.
    """
    replaced: dict[int, torch.Tensor] = {}
    storages: set[int] = set()
    sources = {key: state[key] for key in keys}
    # The sources that convert, in order (a shared parameter once), are read ahead of their
    # conversion; a same-dtype source stays lazy, read where it is used.
    converting: dict[int, torch.Tensor] = {}
    for key in keys:
        if sources[key].dtype != tensor_at(module, key).dtype:
            converting.setdefault(id(tensor_at(module, key)), sources[key])
    ahead = ReadAhead(list(converting.values()))
    ahead.consumed()
    for key in progress(keys, total=len(keys), desc="loading weights", unit="tensor"):
        owner, name = _locate(module, key)
        old = tensor_at(module, key)
        source = sources[key]
        target = device.device(key) if isinstance(device, Destinations) else device
        if isinstance(target, str):  # DISK
            device.offload(key, convert_tensor(source, old.dtype, torch.device("cpu")))
            ahead.consumed(converting.get(id(old)))
            continue
        if id(old) not in replaced:
            tensor = convert_tensor(source, old.dtype, target)
            ahead.consumed(converting.get(id(old)))
            if tensor.numel() and tensor.data_ptr() in storages:
                tensor = tensor.clone()
            storages.add(tensor.data_ptr())
            if isinstance(old, torch.nn.Parameter):
                new = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
                new.__dict__.update(old.__dict__)  # model_parallel and similar flags
            else:
                new = tensor
            replaced[id(old)] = new
        _set_tensor(owner, name, replaced[id(old)])


def materialize_missing(module: torch.nn.Module, keys: list[str], device: torch.device) -> dict[str, str]:
    """Give ``meta`` tensors that the checkpoint lacks real storage, initialised by their owner's
    ``reset_parameters`` (a LayerNorm weight becomes ones, a linear weight random), with the
    owner's loaded tensors kept. A tensor whose owner has no ``reset_parameters`` becomes zeros.
    Returns how each key was filled: ``"reset_parameters"`` or ``"zeros"``."""
    owners: dict[int, tuple[torch.nn.Module, list[str]]] = {}
    for key in keys:
        owner, name = _locate(module, key)
        owners.setdefault(id(owner), (owner, []))[1].append(key)
    how: dict[str, str] = {}
    for owner, owner_keys in owners.values():
        names = [key.rpartition(".")[2] for key in owner_keys]
        for name in names:
            old = owner._parameters[name] if name in owner._parameters else owner._buffers[name]
            tensor = torch.empty(old.shape, dtype=old.dtype, device=device)
            if isinstance(old, torch.nn.Parameter):
                new = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
                new.__dict__.update(old.__dict__)
                tensor = new
            _set_tensor(owner, name, tensor)
        filled = "reset_parameters" if _reset_keeping_loaded(owner, names) else "zeros"
        if filled == "zeros":
            with torch.no_grad():
                for name in names:
                    (owner._parameters.get(name) if name in owner._parameters else owner._buffers[name]).zero_()
        how.update(dict.fromkeys(owner_keys, filled))
    return how


def _reset_keeping_loaded(owner: torch.nn.Module, missing: list[str]) -> bool:
    """Run ``owner.reset_parameters()`` and put back the tensors it already had from the
    checkpoint (those not in ``missing``); False when the owner has no ``reset_parameters``."""
    if not hasattr(owner, "reset_parameters"):
        return False
    loaded = {
        name: tensor.detach().clone()
        for name, tensor in [*owner.named_parameters(recurse=False), *owner.named_buffers(recurse=False)]
        if name not in missing and tensor is not None
    }
    owner.reset_parameters()
    with torch.no_grad():
        for name, value in loaded.items():
            tensor_of = owner._parameters if name in owner._parameters else owner._buffers
            tensor_of[name].copy_(value)
    return True


def apply_load_pre_hooks(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` after the ``load_state_dict`` pre-hooks of ``module`` and its submodules
    ran on it (a model renaming keys of older checkpoints), as ``load_state_dict`` runs them."""
    state = dict(state)
    for prefix, submodule in module.named_modules():
        for hook in submodule._load_state_dict_pre_hooks.values():
            hook(state, f"{prefix}." if prefix else "", {}, False, [], [], [])
    return state


def load_state_dict_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    device: torch.device | str | Destinations = "cpu",
) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``module`` (non-strict) and return ``(missing, unexpected)`` keys.

    The module's ``load_state_dict`` pre-hooks apply first, on the meta path too (the copy path
    runs them again through ``load_state_dict``, so they must be idempotent, as renames are).
    Shapes are checked and every mismatch is reported by key. ``meta`` parameters (a
    ``skip_init`` model) take the checkpoint's tensors, converted one by one to their dtype, on
    ``device`` (``Destinations``: each on its module's device, or written to the offload folder);
    real ones are copied into.
    """
    state = apply_load_pre_hooks(module, state)
    own = module.state_dict(keep_vars=True)
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if mismatched:
        raise CheckpointError(
            "shape mismatch between checkpoint and model:\n  " + "\n  ".join(mismatched) + "\n(Is the model "
            "configured as the checkpoint was, including model_parallel_size?)"
        )
    meta_keys = [key for key in own if key in state and own[key].is_meta]
    copy_state = {key: value for key, value in state.items() if key in own and not own[key].is_meta}
    if copy_state:
        module.load_state_dict(copy_state, strict=False)
    _assign_meta(module, state, meta_keys, device if isinstance(device, Destinations) else torch.device(device))
    if isinstance(device, Destinations):
        device.finish()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    return missing, unexpected
