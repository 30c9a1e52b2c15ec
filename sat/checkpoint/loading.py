"""``load_checkpoint``: read this rank's part of a checkpoint (resharded when it was saved
with another model-parallel size) into a model, and decide what missing weights mean."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Mapping

import torch

from sat import mpu
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import get_checkpoint_iteration, get_checkpoint_name, saved_model_parallel_size, shard_path
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
from sat.mpu.reshard import partition_specs, reshard_state
from sat.runtime import global_rank, is_zero3_partitioned, resolve_device

_EMA_TAG = re.compile(r"(\d+)-ema")  # the EMA weights saved with an iteration (sat.training.ema)


def load_checkpoint(
    model: torch.nn.Module,
    args,
    load_path: str | None = None,
    prefix: str = "",
    specific_iteration: int | str | None = None,
) -> int:
    """Load the checkpoint in ``load_path`` (default ``args.load``) into ``model``; returns the
    iteration to continue from.

    ``args.mode`` decides what missing weights mean: in ``inference`` (the default) they are an
    error unless ``args.force_inference``; in ``finetune`` only mixin (or cross-attention)
    weights may be missing and those mixins are re-initialised; ``pretrain`` also restores the
    random states. ``prefix`` loads only the keys starting with it, stripped.
    ``specific_iteration`` loads that iteration instead of ``latest``'s: a positive int, or
    ``"<iteration>-ema"`` for the EMA weights ``FusedEmaAdam`` training saved with it.
    """
    load_path = load_path or getattr(args, "load", None)
    if not load_path:
        raise ValueError("load_checkpoint needs load_path or args.load")
    mode = getattr(args, "mode", "inference")
    iteration, release, _ = get_checkpoint_iteration(load_path)
    directory: int | str = iteration
    if specific_iteration is not None:
        iteration, directory = _specific_iteration(specific_iteration)
        release = False
    path = get_checkpoint_name(load_path, directory, release)
    if mpu.get_data_parallel_rank() == 0:
        print_all(f"global rank {global_rank()} is loading checkpoint {path}")
    module = unwrap_module(model)
    checkpoint, state = _read_for_this_rank(path, module, prefix)

    device = _model_device(module, args)
    with _gathered(module):
        missing, unexpected = load_state_dict_into(module, state, device)
        if unexpected:
            print_rank0(f"Will continue but found unexpected keys in {path}: {unexpected}", level="WARNING")
        if missing:
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


def _gathered(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Whole parameters inside the block for a model partitioned by ZeRO-3 (``deepspeed.zero.Init``);
    rank 0's values are partitioned again at the end. Nothing to do otherwise."""
    if not is_zero3_partitioned(module):
        return contextlib.nullcontext()
    # deepspeed is imported: it partitioned the parameters.
    return sys.modules["deepspeed"].zero.GatheredParameters(list(module.parameters()), modifier_rank=0)


def _read_for_this_rank(path: str, module: torch.nn.Module, prefix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint file of this model-parallel rank and its module state (keys with ``prefix``,
    stripped); resharded from every saved rank when the checkpoint's model-parallel size differs."""
    iteration_dir = os.path.dirname(path)
    saved = saved_model_parallel_size(iteration_dir) if os.path.isdir(iteration_dir) else 1
    current = mpu.get_model_parallel_world_size()
    if saved == current:
        sources = [read_checkpoint_file(path)]
    else:
        print_rank0(f"resharding {iteration_dir} from model-parallel size {saved} to {current}")
        sources = [read_checkpoint_file(shard_path(iteration_dir, rank)) for rank in range(saved)]
    states = [_strip_prefix(source["module"], prefix) for source in sources]
    if prefix and not states[0]:
        raise CheckpointError(f"no key of {path} starts with prefix {prefix!r}")
    if saved != current:
        # Renamed first (a LoRA-wrapped layer takes a plain layer's weight): resharding finds
        # each parameter's layout under the model's own names.
        states = [apply_load_pre_hooks(module, state) for state in states]
        states = [reshard_state(states, partition_specs(module), current, mpu.get_model_parallel_rank())]
    return sources[0], states[0]


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _model_device(module: torch.nn.Module, args) -> torch.device:
    """Where the checkpoint's tensors go: beside the model's real parameters, or (all on
    ``meta``) the device ``args`` names."""
    real = next((p.device for p in module.parameters() if not p.is_meta), None)
    return real if real is not None else resolve_device(args)


def _handle_missing(module, missing: list[str], mode: str, args, path: str, device: torch.device) -> None:
    if mode == "inference":
        if not getattr(args, "force_inference", False):
            raise CheckpointError(
                f"{path} lacks weights the model needs for inference: {missing}. "
                "Set args.force_inference = True to run anyway with those weights freshly initialised."
            )
        print_rank0(f"force_inference: initialising weights missing from {path}: {missing}", level="WARNING")
    elif not getattr(args, "force_train", False):
        unknown = [key for key in missing if _owning_mixin(module, key) is None and "cross_attention" not in key]
        if unknown or mode != "finetune":
            raise CheckpointError(
                f"{path} lacks weights {unknown or missing}. In --mode finetune only mixin and cross-attention "
                "weights may be missing (they are initialised); pass --force-train to train anyway."
            )
    meta_missing = [key for key in missing if tensor_at(module, key).is_meta]
    materialize_missing(module, meta_missing, device)
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
