"""Checkpoints in the original library's layout, readable and writable by both.

::

    <save>/latest                               the last iteration ("1000") or "release"
    <save>/model_config.json                    model_class, architecture and model arguments
    <save>/<iteration>/mp_rank_00_model_states.pt   {"module": state_dict, ...}, one per MP rank

A checkpoint saved from a DeepSpeed engine (``training_main``) also carries what a run needs
to continue exactly: the optimizer state (with ZeRO, DeepSpeed's per-rank shards next to the
model file), the learning-rate schedule, the iteration, the data position and the random
states of every rank (``rng_states_rank_XXXXX.pt``; rank 0's are also in the model file, as the
original library wrote them, together with the model-parallel tracker's ``rng_tracker_states``).

Every file is written to a temporary name and renamed into place; a training checkpoint is
assembled in ``<iteration>.partial/`` and renamed to ``<iteration>/`` once every rank has
written its part; ``latest`` moves last. A crash mid-save leaves the previous checkpoint
loadable. Files are read with ``torch.load(weights_only=True)``: no code runs, and a model
built with ``skip_init`` takes the file's tensors without a second copy in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import random
import shutil
import sys
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist

from sat import mpu
from sat.helpers import print_all, print_rank0
from sat.mpu.reshard import partition_specs, reshard_state, saved_model_parallel_size, shard_path

# Always written to model_config.json, in the original's order.
_ARCH_ARGS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "vocab_size",
    "layernorm_order",
    "model_parallel_size",
    "max_sequence_length",
)
# Optional architecture arguments: written to model_config.json only when not the default.
_OPTIONAL_ARCH_ARGS = (
    ("is_decoder", False),
    ("cross_attn_hidden_size", None),
    ("use_bias", True),
    ("use_qkv_bias", False),
    ("inner_hidden_size", None),
    ("hidden_size_per_attention_head", None),
    ("cross_hidden_size_per_attention_head", None),
    ("use_final_layernorm", True),
    ("layernorm_epsilon", 1e-5),
    ("num_multi_query_heads", 0),
    ("cross_num_multi_query_heads", 0),
    ("row_parallel_linear_final_bias", True),
    ("is_gated_mlp", False),
    ("is_rotary_emb", False),
    ("rotary_base", 10000.0),
    ("parallel_output", False),
    ("num_experts", 1),
)


# What the original library's ``np.random.get_state()`` array pickles as: plain data.
_NUMPY_STATE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


# ----------------------------------------------------------------------------- paths
def get_checkpoint_name(checkpoints_path: str, iteration: int | str, release: bool = False, zero: bool = False) -> str:
    """``<path>/<iteration or release>/mp_rank_XX_model_states.pt`` for this model-parallel rank."""
    directory = "release" if release else str(iteration)
    if zero:
        directory += f"_zero_dp_rank_{mpu.get_data_parallel_rank()}"
    return os.path.join(checkpoints_path, directory, f"mp_rank_{mpu.get_model_parallel_rank():02d}_model_states.pt")


def get_checkpoint_tracker_filename(checkpoints_path: str, old_checkpoint: bool = False) -> str:
    """The ``latest`` file of a checkpoint directory."""
    return os.path.join(checkpoints_path, "latest")


def get_checkpoint_iteration(load_path: str) -> tuple[int, bool, bool]:
    """``(iteration, release, success)`` from ``<load_path>/latest``."""
    tracker = get_checkpoint_tracker_filename(load_path)
    if not os.path.isfile(tracker):
        raise CheckpointError(
            f"{load_path} is not a sat checkpoint directory: it has no 'latest' file "
            "(expected latest, model_config.json and <iteration>/mp_rank_00_model_states.pt)"
        )
    with open(tracker) as f:
        text = f.read().strip()
    if text == "release":
        return 0, True, True
    try:
        iteration = int(text)
    except ValueError:
        raise CheckpointError(f"{tracker} should hold an iteration number or 'release', found {text!r}") from None
    if iteration < 0:
        raise CheckpointError(f"{tracker} holds a negative iteration {iteration}")
    return iteration, False, True


# ----------------------------------------------------------------------------- writing
def _atomic_write(path: str, write) -> None:
    """Write through ``write(tmp_path)`` and rename into place: readers see old or new, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _json_safe(name: str, value):
    try:
        json.dumps(value)
    except TypeError:
        warnings.warn(f"model_config.json: {name}={value!r} is not JSON-serialisable and is not saved", stacklevel=3)
        return False
    return True


def extract_model_specific_args_from_model(args, model: torch.nn.Module) -> dict:
    """The values on ``args`` of every argument that a (sub)model's ``add_model_specific_args``
    declares."""
    parser = argparse.ArgumentParser(add_help=False)
    for module in _unwrap(model).modules():
        add_args = getattr(type(module), "add_model_specific_args", None)
        if add_args is None:
            continue
        try:
            add_args(parser)
        except argparse.ArgumentError:
            pass  # a parent class already declared it
    return {key: getattr(args, key) for key in vars(parser.parse_args([])) if hasattr(args, key)}


def extract_model_specific_args_to_dump(args, model: torch.nn.Module) -> dict:
    """The contents of ``model_config.json`` for ``model``."""
    module = _unwrap(model)
    to_dump: dict = {"model_class": type(module).__name__}
    if getattr(args, "tokenizer_type", "fake") != "fake":
        to_dump["tokenizer_type"] = args.tokenizer_type
    transformer = getattr(module, "transformer", None)
    for name in _ARCH_ARGS:
        # The backbone's value is the truth: a subclass may override what args says.
        value = getattr(transformer, name, None)
        value = value if value is not None else getattr(args, name, None)
        if name == "model_parallel_size" and value is None:
            value = mpu.get_model_parallel_world_size()
        if value is not None:
            to_dump[name] = value
    # A model without a backbone of its own (EncoderDecoderModel) is built from args alone.
    source = transformer if transformer is not None else args
    for name, default in _OPTIONAL_ARCH_ARGS:
        value = getattr(source, name, default)
        if value != default:
            to_dump[name] = value
    to_dump.update(extract_model_specific_args_from_model(args, module))
    return {key: value for key, value in to_dump.items() if _json_safe(key, value)}


def save_model_config(args, model: torch.nn.Module, save_dir: str) -> None:
    """Write ``<save_dir>/model_config.json`` (rank 0 only)."""
    if _rank() == 0:
        config = extract_model_specific_args_to_dump(args, model)
        if "tokenizer_type" in config:
            from sat.tokenization import portable_tokenizer_type

            config["tokenizer_type"] = portable_tokenizer_type(config["tokenizer_type"], save_dir)
        atomic_write_text(os.path.join(save_dir, "model_config.json"), json.dumps(config, indent=4))


def save_checkpoint(
    iteration: int, model: torch.nn.Module, optimizer, lr_scheduler, args, client_state: dict | None = None
) -> None:
    """Save ``model`` as ``<args.save>/<iteration>`` and point ``latest`` at it.

    For a plain module: its weights, one file per model-parallel rank (written by the first
    data-parallel copy). For a DeepSpeed engine: the full training state (see the module
    docstring), with ``client_state`` (e.g. the data position) added to the model file. Every
    rank must call it.
    """
    save_dir = args.save
    if not save_dir:
        raise ValueError("save_checkpoint needs args.save, the directory to write to")
    if is_deepspeed_engine(model):
        _save_engine_checkpoint(iteration, model, lr_scheduler, args, client_state or {})
        return
    module = _unwrap(model)
    path = get_checkpoint_name(save_dir, iteration)
    if mpu.get_data_parallel_rank() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print_rank0(f"saving checkpoint {path}")
        atomic_torch_save({"module": module.state_dict()}, path)
    _barrier()
    if _rank() == 0:
        save_model_config(args, module, save_dir)
        atomic_write_text(get_checkpoint_tracker_filename(save_dir), str(iteration))
    _barrier()


def is_deepspeed_engine(model) -> bool:
    """Whether ``model`` is a DeepSpeed engine (what ``deepspeed.initialize`` returns)."""
    ds = sys.modules.get("deepspeed")
    return ds is not None and isinstance(model, ds.DeepSpeedEngine)


def _broadcast_decision(value: bool) -> bool:
    """Rank 0's ``value`` on every rank (a file-system check must not differ between ranks)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _read_latest(save_dir: str) -> str | None:
    tracker = get_checkpoint_tracker_filename(save_dir)
    if not os.path.isfile(tracker):
        return None
    with open(tracker) as f:
        return f.read().strip()


def _precision(engine) -> str:
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def _full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's complete state dict on CPU, gathering ZeRO-3 partitions (a collective)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        return {key: value.detach().cpu().clone() for key, value in engine.module.state_dict().items()}


def _save_engine_checkpoint(iteration: int, engine, lr_scheduler, args, client_state: dict) -> None:
    save_dir = args.save
    final = os.path.join(save_dir, str(iteration))
    if _broadcast_decision(os.path.isdir(final) and _read_latest(save_dir) == str(iteration)):
        print_rank0(f"{final} is already the latest checkpoint; not saving iteration {iteration} again")
        return
    use_safe_checkpoint_engine(engine)
    tag = f"{iteration}.partial"
    partial = os.path.join(save_dir, tag)
    if _rank() == 0 and os.path.isdir(partial):  # left by a save that crashed
        shutil.rmtree(partial)
    _barrier()
    state = {
        "iteration": iteration,
        "client_lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "zero_stage": engine.zero_optimization_stage(),
        "dp_world_size": mpu.get_data_parallel_world_size(),
        "precision": _precision(engine),
        **client_state,
    }
    rng = None if getattr(args, "no_save_rng", False) else rng_states()
    if rng is not None:
        state.update(rng)
    print_rank0(f"saving checkpoint {final}")
    engine.save_checkpoint(save_dir, tag=tag, client_state=state, save_latest=False)
    if engine.zero_optimization_partition_weights():
        # ZeRO-3 writes only partitions; the original layout needs the whole module per MP rank.
        module_state = _full_state_dict(engine)
        if mpu.get_data_parallel_rank() == 0:
            atomic_torch_save({"module": module_state, **state}, get_checkpoint_name(save_dir, tag))
    if rng is not None:
        atomic_torch_save(rng, os.path.join(partial, f"rng_states_rank_{_rank():05d}.pt"))
    _barrier()
    if _rank() == 0:
        if os.path.isdir(final):  # left by a run that crashed before pointing ``latest`` at it
            shutil.rmtree(final)
        os.replace(partial, final)
        save_model_config(args, engine.module, save_dir)
        atomic_write_text(get_checkpoint_tracker_filename(save_dir), str(iteration))
    _barrier()


class _SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine with atomic writes and ``weights_only`` reads."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def save(self, state_dict, path: str) -> None:
        atomic_torch_save(state_dict, path)

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def _deepspeed_safe_globals() -> list:
    # The few plain-data classes DeepSpeed pickles into its optimizer files.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def use_safe_checkpoint_engine(engine) -> None:
    """Make ``engine`` write its checkpoint files atomically and read them with
    ``weights_only=True`` (idempotent)."""
    if not isinstance(engine.checkpoint_engine, _SafeCheckpointEngine):
        engine.checkpoint_engine = _SafeCheckpointEngine(engine.checkpoint_engine)


# ----------------------------------------------------------------------------- reading
def read_checkpoint_file(path: str) -> dict:
    """Load a checkpoint file safely (``weights_only``), memory-mapped when possible."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else "the folder does not exist"
        raise CheckpointError(
            f"missing checkpoint file {path} (present: {present}). A different model_parallel_size "
            "or iteration than the checkpoint was saved with?"
        )
    try:
        with torch.serialization.safe_globals(_NUMPY_STATE_GLOBALS):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects that are not safe to load (weights_only refused): {e}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e
    if not isinstance(state, Mapping) or "module" not in state:
        keys = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{path} has no 'module' entry (found {keys}); not a sat checkpoint")
    return state


def _locate(module: torch.nn.Module, key: str) -> tuple[torch.nn.Module, str]:
    owner_path, _, name = key.rpartition(".")
    return (module.get_submodule(owner_path) if owner_path else module), name


def _tensor_at(module: torch.nn.Module, key: str) -> torch.Tensor:
    owner, name = _locate(module, key)
    return owner._parameters[name] if name in owner._parameters else owner._buffers[name]


def _set_tensor(owner: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name] = value
    else:
        owner._buffers[name] = value


def _assign_meta(module: torch.nn.Module, state: Mapping, keys: list[str], device: torch.device) -> None:
    """Put checkpoint tensors in place of ``meta`` parameters (no copy when dtype and device
    already match), keeping each parameter's flags and any sharing between modules.

    Two parameters the model keeps apart never end up on one storage, even where the source
    held one tensor for both (a tied HF embedding and sat's own ``lm_head``): the second gets a
    copy, so training updates them separately, as it would after a save and reload.
    """
    replaced: dict[int, torch.Tensor] = {}
    storages: set[int] = set()
    for key in keys:
        owner, name = _locate(module, key)
        old = _tensor_at(module, key)
        if id(old) not in replaced:
            tensor = state[key].to(device=device, dtype=old.dtype)
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


def _materialize_missing(module: torch.nn.Module, keys: list[str], device: torch.device) -> None:
    """Give ``meta`` parameters that the checkpoint lacks real, initialised storage: owners that
    lost every parameter are re-initialised with their own ``reset_parameters``, others get
    zeros for the missing tensors."""
    owners: dict[int, tuple[torch.nn.Module, list[str]]] = {}
    for key in keys:
        owner, name = _locate(module, key)
        owners.setdefault(id(owner), (owner, []))[1].append(name)
    for owner, names in owners.values():
        for name in names:
            old = owner._parameters[name] if name in owner._parameters else owner._buffers[name]
            tensor = torch.zeros(old.shape, dtype=old.dtype, device=device)
            if isinstance(old, torch.nn.Parameter):
                new = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
                new.__dict__.update(old.__dict__)
                tensor = new
            _set_tensor(owner, name, tensor)
        own = [n for n, _ in owner.named_parameters(recurse=False)]
        if set(own) <= set(names) and hasattr(owner, "reset_parameters"):
            owner.reset_parameters()


def _apply_load_pre_hooks(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` after the ``load_state_dict`` pre-hooks of ``module`` and its submodules
    ran on it (a model renaming keys of older checkpoints), as ``load_state_dict`` runs them."""
    state = dict(state)
    for prefix, submodule in module.named_modules():
        for hook in submodule._load_state_dict_pre_hooks.values():
            hook(state, f"{prefix}." if prefix else "", {}, False, [], [], [])
    return state


def load_state_dict_into(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``module`` (non-strict) and return ``(missing, unexpected)`` keys.

    The module's ``load_state_dict`` pre-hooks apply first, on the meta path too (the copy path
    runs them again through ``load_state_dict``, so they must be idempotent, as renames are).
    Shapes are checked and every mismatch is reported by key. ``meta`` parameters (a
    ``skip_init`` model) take the checkpoint's tensors; real ones are copied into.
    """
    state = _apply_load_pre_hooks(module, state)
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
    _assign_meta(module, state, meta_keys, torch.device(device))
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    return missing, unexpected


def _owning_mixin(module: torch.nn.Module, key: str) -> str | None:
    """The mixin a parameter belongs to: ``<name>`` in ``mixins.<name>.*``, or the
    ``mixin_name`` a tensor carries (mixins such as LoRA keep parameters inside the backbone)."""
    parts = key.split(".")
    if "mixins" in parts:
        return parts[parts.index("mixins") + 1]
    return getattr(_tensor_at(module, key), "mixin_name", None)


def _mixin_names(module: torch.nn.Module, keys: list[str]) -> list[str]:
    names = []
    for key in keys:
        name = _owning_mixin(module, key)
        if name is not None and name not in names:
            names.append(name)
    return names


def rng_states() -> dict:
    """This process's random states (Python, NumPy, torch, CUDA and the model-parallel
    tracker) in the original library's keys, as plain data that ``weights_only`` can load."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": (name, keys.tolist(), position, has_gauss, cached_gaussian),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "rng_tracker_states": mpu.get_cuda_rng_tracker().get_states(),
    }


def restore_rng_states(state: Mapping) -> None:
    """Set the random states saved by ``rng_states`` (or by the original library)."""
    random.setstate(_as_tuples(state["random_rng_state"]))
    name, keys, *rest = state["np_rng_state"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch_rng_state"])
    if torch.cuda.is_available() and state.get("cuda_rng_state") is not None:
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    if state.get("rng_tracker_states") is not None:
        mpu.get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


def _as_tuples(value):
    # random.setstate needs tuples; a round trip through some serialisers gives lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _restore_rng(state: Mapping, path: str) -> None:
    wanted = ("random_rng_state", "np_rng_state", "torch_rng_state")
    if not all(key in state for key in wanted):
        print_rank0(f"{path} holds no random states; the random streams start fresh.", level="WARNING")
        return
    restore_rng_states(state)


def load_checkpoint(
    model: torch.nn.Module,
    args,
    load_path: str | None = None,
    prefix: str = "",
    specific_iteration: int | None = None,
) -> int:
    """Load the checkpoint in ``load_path`` (default ``args.load``) into ``model``; returns the
    iteration to continue from.

    ``args.mode`` decides what missing weights mean: in ``inference`` (the default) they are an
    error unless ``args.force_inference``; in ``finetune`` only mixin (or cross-attention)
    weights may be missing and those mixins are re-initialised; ``pretrain`` also restores the
    random states. ``prefix`` loads only the keys starting with it, stripped.
    """
    load_path = load_path or getattr(args, "load", None)
    if not load_path:
        raise ValueError("load_checkpoint needs load_path or args.load")
    mode = getattr(args, "mode", "inference")
    iteration, release, _ = get_checkpoint_iteration(load_path)
    if specific_iteration is not None:
        if not isinstance(specific_iteration, int) or specific_iteration <= 0:
            raise ValueError(f"specific_iteration must be a positive int, got {specific_iteration!r}")
        iteration, release = specific_iteration, False
    path = get_checkpoint_name(load_path, iteration, release)
    if mpu.get_data_parallel_rank() == 0:
        print_all(f"global rank {_rank()} is loading checkpoint {path}")
    module = _unwrap(model)
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
        _restore_rng(checkpoint, path)
    elif mode == "inference":
        module.eval()
    if mpu.get_data_parallel_rank() == 0:
        print_all(f"> successfully loaded {path}")
    return iteration


def _gathered(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Whole parameters inside the block for a model partitioned by ZeRO-3 (``deepspeed.zero.Init``);
    rank 0's values are partitioned again at the end. Nothing to do otherwise."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    return sys.modules["deepspeed"].zero.GatheredParameters(params, modifier_rank=0)


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
        states = [_apply_load_pre_hooks(module, state) for state in states]
        states = [reshard_state(states, partition_specs(module), current, mpu.get_model_parallel_rank())]
    return sources[0], states[0]


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _model_device(module: torch.nn.Module, args) -> torch.device:
    real = next((p.device for p in module.parameters() if not p.is_meta), None)
    if real is not None:
        return real
    from sat.model.base_model import resolve_device

    return resolve_device(args)


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
    meta_missing = [key for key in missing if _tensor_at(module, key).is_meta]
    _materialize_missing(module, meta_missing, device)
    if mode != "inference" and hasattr(module, "reinit"):
        module.reinit(_mixin_names(module, missing))


# ----------------------------------------------------------------------------- resuming training
def load_training_state(engine, lr_scheduler, args, load_path: str | None = None) -> dict:
    """Continue a run from the checkpoint in ``load_path`` (default ``args.load``), after
    ``deepspeed.initialize``: restore the optimizer (with its ZeRO shards) and the learning-rate
    schedule. Returns the checkpoint's client state: ``iteration``, ``data_position`` and, unless
    ``--no-load-rng``, this rank's random states under ``"rng"`` (apply them with
    ``restore_rng_states`` right before the next step). Weights-only checkpoints, and ones saved
    with another ZeRO stage, precision or data-parallel size, restore the weights only (with
    a warning); the optimizer then starts fresh.
    """
    load_path = load_path or args.load
    iteration, release, _ = get_checkpoint_iteration(load_path)
    path = get_checkpoint_name(load_path, iteration, release)
    state = dict(read_checkpoint_file(path))
    now = (engine.zero_optimization_stage(), mpu.get_data_parallel_world_size(), _precision(engine))
    then = (state.get("zero_stage"), state.get("dp_world_size"), state.get("precision"))
    if None in then:
        print_rank0(f"{path} holds no optimizer state (weights only): the optimizer starts fresh.", "WARNING")
    elif then != now:
        print_rank0(
            f"{path} was saved with (ZeRO stage, data-parallel size, precision) = {then}, this run uses {now}: "
            "the optimizer state is not restored and starts fresh.",
            level="WARNING",
        )
    else:
        use_safe_checkpoint_engine(engine)
        loaded, _ = engine.load_checkpoint(
            load_path, tag=str(iteration), load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load the training state of {path}")
    if lr_scheduler is not None and state.get("client_lr_scheduler"):
        lr_scheduler.load_state_dict(state["client_lr_scheduler"])
    if not getattr(args, "no_load_rng", False):
        own = os.path.join(os.path.dirname(path), f"rng_states_rank_{_rank():05d}.pt")
        if os.path.isfile(own):
            state["rng"] = torch.load(own, weights_only=True)
        elif "torch_rng_state" in state:
            print_rank0(f"{own} is missing: every rank continues from rank 0's random states.", "WARNING")
            state["rng"] = {key: state[key] for key in rng_states() if key in state}
    return state
