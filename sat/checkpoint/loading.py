"""``load_checkpoint``: read this rank's part of a checkpoint (resharded when it was saved
with another model-parallel size) into a model, and decide what missing weights mean. With
``from_rank0`` only global rank 0 reads it and sends every rank its part (``broadcast``); a
model partitioned by ZeRO-3 takes it one submodule at a time (``partitioned``)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist

from sat import mpu
from sat.checkpoint.broadcast import distribute_shards_from_rank0, share_from_rank0
from sat.checkpoint.destinations import Destinations
from sat.checkpoint.dtypes import saved_dtype
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import get_checkpoint_iteration, get_checkpoint_name, saved_model_parallel_size, shard_path
from sat.checkpoint.partitioned import gathered, load_into_partitions
from sat.checkpoint.reading import read_checkpoint_file
from sat.checkpoint.rng import restore_saved_rng
from sat.checkpoint.state_dict import (
    apply_load_pre_hooks,
    load_state_dict_into,
    materialize_missing,
    tensor_at,
    unwrap_module,
)
from sat.helpers import print_all, print_rank0
from sat.mpu.reshard import partition_specs, reshard_state, reshard_tensor
from sat.runtime import global_rank, is_zero3_partitioned, resolve_device

_EMA_TAG = re.compile(r"(\d+)-ema")  # the EMA weights saved with an iteration (sat.training.ema)


def load_checkpoint(
    model: torch.nn.Module,
    args,
    load_path: str | None = None,
    prefix: str = "",
    specific_iteration: int | str | None = None,
    from_rank0: bool = False,
    destinations: Destinations | None = None,
) -> int:
    """Load the checkpoint in ``load_path`` (default ``args.load``) into ``model``; returns the
    iteration to continue from.

    ``args.mode`` decides what missing weights mean: in ``inference`` (the default) they are an
    error unless ``args.force_inference``; in ``finetune`` only mixin (or cross-attention)
    weights may be missing and those mixins are re-initialised; ``pretrain`` also restores the
    random states. ``prefix`` loads only the keys starting with it, stripped.
    ``specific_iteration`` loads that iteration instead of ``latest``'s: a positive int, or
    ``"<iteration>-ema"`` for the EMA weights ``FusedEmaAdam`` training saved with it.
    ``from_rank0``: in a multi-process run, only global rank 0 opens files (every rank must
    call it; the others may build ``model`` on ``meta``).
    ``destinations``: the device (or offload folder) of each tensor of a ``meta``-built model
    (``from_pretrained(device_map=...)``); default: all on the model's device.
    """
    load_path = load_path or getattr(args, "load", None)
    if not load_path:
        raise ValueError("load_checkpoint needs load_path or args.load")
    mode = getattr(args, "mode", "inference")
    module = unwrap_module(model)
    device = _model_device(module, args)
    if from_rank0 and dist.is_initialized() and dist.get_world_size() > 1:
        iteration, path, checkpoint, (missing, unexpected) = _load_from_rank0(
            module, load_path, prefix, specific_iteration, device
        )
    else:
        iteration, path = _locate(load_path, specific_iteration)
        if mpu.get_data_parallel_rank() == 0:
            print_all(f"global rank {global_rank()} is loading checkpoint {path}")
        checkpoint, state = _read_for_this_rank(path, module, prefix)
        if is_zero3_partitioned(module):
            missing, unexpected = load_into_partitions(module, state)
        else:
            missing, unexpected = load_state_dict_into(module, state, destinations or device)
    if unexpected:
        _handle_unexpected(unexpected, mode, args, path)
    if missing:
        with gathered(tensor_at(module, key) for key in missing):  # re-initialised mixins under ZeRO-3
            _handle_missing(module, missing, mode, args, path, device)

    if mode == "finetune":
        iteration = 0
    elif mode == "pretrain" and not getattr(args, "no_load_rng", False):
        restore_saved_rng(checkpoint, path)
    elif mode == "inference":
        module.eval()
    if mpu.get_data_parallel_rank() == 0:
        print_all(f"> successfully loaded {path}")
    return iteration


def _specific_iteration(value: int | str) -> tuple[int, int | str]:
    """``(iteration, directory name)`` for ``specific_iteration``."""
    match = _EMA_TAG.fullmatch(value) if isinstance(value, str) else None
    if match:
        return int(match.group(1)), value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"specific_iteration must be a positive int or '<iteration>-ema', got {value!r}")
    return value, value


def _locate(load_path: str, specific_iteration: int | str | None) -> tuple[int, str]:
    """``(iteration, file of this model-parallel rank)`` of the checkpoint to load."""
    iteration, release, _ = get_checkpoint_iteration(load_path)
    directory: int | str = iteration
    if specific_iteration is not None:
        iteration, directory = _specific_iteration(specific_iteration)
        release = False
    return iteration, get_checkpoint_name(load_path, directory, release)


def saved_checkpoint_dtype(load_path: str, specific_iteration: int | str | None = None) -> torch.dtype:
    """The dtype of most floating weights in the checkpoint at ``load_path`` (this rank's file;
    only its metadata is read)."""
    _, path = _locate(load_path, specific_iteration)
    return saved_dtype(read_checkpoint_file(path)["module"])


def _read_for_this_rank(path: str, module: torch.nn.Module, prefix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint file of this model-parallel rank and its module state (keys with ``prefix``,
    stripped); resharded from every saved rank when the checkpoint's model-parallel size differs."""
    saved, current = _saved_size(path), mpu.get_model_parallel_world_size()
    if saved == current:
        checkpoint, states = _read_states([path], prefix)
        return checkpoint, states[0]
    print_rank0(f"resharding {os.path.dirname(path)} from model-parallel size {saved} to {current}")
    checkpoint, states = _read_saved_ranks(path, module, prefix, saved)
    return checkpoint, reshard_state(states, partition_specs(module), current, mpu.get_model_parallel_rank())


def _saved_size(path: str) -> int:
    """The model-parallel size the checkpoint whose rank file is ``path`` was saved with."""
    iteration_dir = os.path.dirname(path)
    return saved_model_parallel_size(iteration_dir) if os.path.isdir(iteration_dir) else 1


def _read_states(paths: list[str], prefix: str) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """The first file's checkpoint and every file's module state (keys with ``prefix``, stripped)."""
    sources = [read_checkpoint_file(path) for path in paths]
    states = [_strip_prefix(source["module"], prefix) for source in sources]
    if prefix and not states[0]:
        raise CheckpointError(f"no key of {paths[0]} starts with prefix {prefix!r}")
    return sources[0], states


def _read_saved_ranks(path: str, module: torch.nn.Module, prefix: str, saved: int) -> tuple[dict, list[dict]]:
    """Every saved rank's module state, for resharding: renamed first (a LoRA-wrapped layer takes
    a plain layer's weight), so that resharding finds each parameter's layout under the model's
    own names."""
    iteration_dir = os.path.dirname(path)
    checkpoint, states = _read_states([shard_path(iteration_dir, rank) for rank in range(saved)], prefix)
    return checkpoint, [apply_load_pre_hooks(module, state) for state in states]


def _load_from_rank0(
    module: torch.nn.Module, load_path: str, prefix: str, specific_iteration: int | str | None, device: torch.device
) -> tuple[int, str, dict, tuple[list[str], list[str]]]:
    """``from_rank0``: global rank 0 finds and reads the checkpoint (every saved model-parallel
    rank's file) and sends each rank its part; returns ``(iteration, path, the checkpoint without
    its module state, (missing, unexpected))``."""
    if is_zero3_partitioned(module):
        raise ValueError("from_rank0 loads a model built on meta or whole; a ZeRO-3 model loads its partitions itself")
    shards_of: list[Callable[[str], list[torch.Tensor]]] = []
    keys: list[list[str]] = []

    def read() -> tuple[int, str, dict]:
        iteration, path = _locate(load_path, specific_iteration)
        print_all(f"global rank 0 is loading checkpoint {path} for all {dist.get_world_size()} ranks")
        saved, current = _saved_size(path), mpu.get_model_parallel_world_size()
        if saved == current:
            checkpoint, states = _read_states([shard_path(os.path.dirname(path), r) for r in range(saved)], prefix)
            shards_of.append(lambda key: [state[key] for state in states])
        else:
            checkpoint, states = _read_saved_ranks(path, module, prefix, saved)
            specs = partition_specs(module)
            shards_of.append(lambda key: _resharded(states, specs, key, current))
        keys.append(list(states[0]))
        return iteration, path, {key: value for key, value in checkpoint.items() if key != "module"}

    iteration, path, checkpoint = share_from_rank0(read)
    on_rank0 = global_rank() == 0
    result = distribute_shards_from_rank0(
        module, keys[0] if on_rank0 else None, shards_of[0] if on_rank0 else None, device
    )
    return iteration, path, checkpoint, result


def _resharded(states: list[Mapping[str, torch.Tensor]], specs: Mapping, key: str, size: int) -> list[torch.Tensor]:
    """Every new model-parallel rank's tensor of ``key`` (a key the model does not know: rank 0's,
    as ``reshard_state`` keeps it)."""
    shards = [state[key] for state in states]
    return reshard_tensor(shards, specs[key], size, key) if key in specs else [shards[0]] * size


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _model_device(module: torch.nn.Module, args) -> torch.device:
    """Where the checkpoint's tensors go: beside the model's real parameters, or (all on
    ``meta``) the device ``args`` names."""
    real = next((p.device for p in module.parameters() if not p.is_meta), None)
    return real if real is not None else resolve_device(args)


def _handle_unexpected(unexpected: list[str], mode: str, args, path: str) -> None:
    """Weights the model has no place for: an error in inference (the model is not the one the
    checkpoint holds, e.g. fewer layers) unless ``args.force_inference``; a warning when
    finetuning, where dropping a head of the pretrained model is the usual case."""
    if mode == "inference" and not getattr(args, "force_inference", False):
        raise CheckpointError(
            f"{path} holds weights the model has no place for: {unexpected}. Is the model configured as the "
            "checkpoint was (num_layers, mixins, overwrite_args)? Set args.force_inference = True to ignore them."
        )
    print_rank0(f"Will continue but found unexpected keys in {path}: {unexpected}", level="WARNING")


def _handle_missing(module, missing: list[str], mode: str, args, path: str, device: torch.device) -> None:
    if mode == "inference":
        if not getattr(args, "force_inference", False):
            raise CheckpointError(
                f"{path} lacks weights the model needs for inference: {missing}. "
                "Set args.force_inference = True to run anyway with those weights freshly initialised."
            )
    unknown = [key for key in missing if _owning_mixin(module, key) is None and "cross_attention" not in key]
    if mode != "inference" and not getattr(args, "force_train", False) and (unknown or mode != "finetune"):
        raise CheckpointError(
            f"{path} lacks weights {unknown or missing}. In --mode finetune only mixin and cross-attention "
            "weights may be missing (they are initialised); pass --force-train to train anyway."
        )
    meta_missing = [key for key in missing if tensor_at(module, key).is_meta]
    filled = materialize_missing(module, meta_missing, device)
    if filled:  # weights of a model built on meta: say how they got values (others keep their own init)
        zeros = [key for key, how in filled.items() if how == "zeros"]
        print_rank0(
            f"{path} lacks {list(filled)}: initialised by their modules' reset_parameters"
            + (f", except {zeros}, set to zeros (their modules have no reset_parameters)" if zeros else ""),
            # Missing mixin weights are the usual case of finetuning, and reinit sets them next.
            level="INFO" if mode == "finetune" and not unknown else "WARNING",
        )
    if mode != "inference" and hasattr(module, "reinit"):
        module.reinit(_mixin_names(module, missing))


def _owning_mixin(module: torch.nn.Module, key: str) -> str | None:
    """The mixin a parameter belongs to: ``<name>`` in ``mixins.<name>.*``, or the
    ``mixin_name`` a tensor carries (mixins such as LoRA keep parameters inside the backbone)."""
    parts = key.split(".")
    if "mixins" in parts:
        return parts[parts.index("mixins") + 1]
    return getattr(tensor_at(module, key), "mixin_name", None)


def _mixin_names(module: torch.nn.Module, keys: list[str]) -> list[str]:
    names = []
    for key in keys:
        name = _owning_mixin(module, key)
        if name is not None and name not in names:
            names.append(name)
    return names
