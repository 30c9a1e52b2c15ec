"""The process's runtime state, in one place: the process group and model-parallel groups,
random seeds, the device and dtype a model runs in, and whether ZeRO-3 partitions it.

Nothing here runs on import. ``torch.distributed`` is started only by ``initialize_distributed``
and ``ensure_model_parallel``, which ``get_args``, ``training_main`` and ``from_pretrained`` call;
building a model uses ``require_model_parallel``, which never starts one.
"""

from __future__ import annotations

import argparse
import os
import random

import numpy as np
import torch

from sat import mpu
from sat.helpers import get_free_port

_GLOBAL_RANDOM_SEED: int | None = None


# ----------------------------------------------------------------------------- process groups
def initialize_distributed(args) -> bool:
    """Initialise ``torch.distributed`` from ``args`` (rank, world size, backend; the address from
    ``MASTER_ADDR``/``MASTER_PORT``) and the model-parallel groups. Returns False if it was
    already initialised."""
    if torch.distributed.is_initialized():
        ensure_model_parallel(args.model_parallel_size)
        return False
    device = resolve_device(args)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_device(device)
    master_addr = os.getenv("MASTER_ADDR", "127.0.0.1")
    master_port = os.getenv("MASTER_PORT") or str(6000 if args.world_size > 1 else get_free_port())
    torch.distributed.init_process_group(
        backend=args.distributed_backend,
        world_size=args.world_size,
        rank=args.rank,
        init_method=f"tcp://{master_addr}:{master_port}",
    )
    mpu.initialize_model_parallel(args.model_parallel_size)
    return True


def ensure_model_parallel(model_parallel_size: int) -> None:
    """Make sure the model-parallel groups match ``model_parallel_size`` before a model is
    built: use (or start, from the launcher's environment) ``torch.distributed`` and create the
    groups. In a single process at size 1 there is nothing to do; a multi-process launch
    (``WORLD_SIZE > 1``) gets its process group at any size, as from ``get_args``, so that
    collectives after loading (``mp_split_model``, broadcasts) work as with the original."""
    world_size = int(os.getenv("WORLD_SIZE", "1"))
    if not torch.distributed.is_initialized() and world_size > 1:
        _start_from_environment(model_parallel_size, world_size)
        return
    if not _groups_needed(model_parallel_size):
        return
    if torch.distributed.is_initialized():
        mpu.initialize_model_parallel(model_parallel_size)
        return
    _start_from_environment(model_parallel_size, world_size)


def _start_from_environment(model_parallel_size: int, world_size: int) -> None:
    """Start ``torch.distributed`` from the launcher's ``RANK``/``LOCAL_RANK``/``MASTER_*``."""
    if world_size % model_parallel_size:
        raise ValueError(
            f"model_parallel_size={model_parallel_size} needs a multiple of {model_parallel_size} processes, "
            f"this run has WORLD_SIZE={world_size}: launch with torchrun --nproc-per-node {model_parallel_size}"
        )
    env_args = argparse.Namespace(
        rank=int(os.getenv("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.getenv("LOCAL_RANK", "0")),
        device=-1,
        distributed_backend="nccl" if torch.cuda.is_available() else "gloo",
        model_parallel_size=model_parallel_size,
    )
    initialize_distributed(env_args)


def init_model_only(model_parallel_size: int = 1, seed: int | None = 0) -> bool:
    """The original's ``_simple_init`` (model-only mode): seed (unless ``seed`` is 0 or None) and
    set up the model-parallel groups, starting ``torch.distributed`` from the launcher's
    environment only where model parallelism needs it. Returns True if it started it."""
    if seed:
        set_random_seed(seed)
    was_running = torch.distributed.is_initialized()
    ensure_model_parallel(model_parallel_size)
    return torch.distributed.is_initialized() and not was_running


def reset_model_parallel(model_parallel_size: int) -> None:
    """Groups of ``model_parallel_size``, replacing groups of another size: what the original's
    ``from_pretrained(..., overwrite_args={"model_parallel_size": n})`` does inside a running job
    to split or merge a checkpoint. Starts ``torch.distributed`` if none runs."""
    if mpu.model_parallel_is_initialized() and mpu.get_model_parallel_world_size() != model_parallel_size:
        mpu.destroy_model_parallel()
    ensure_model_parallel(model_parallel_size)


def require_model_parallel(model_parallel_size: int) -> None:
    """What a model constructor may do: create the model-parallel groups from a process group
    that is already running, never start one. At size > 1 without ``torch.distributed`` it
    raises, naming what starts it."""
    if not _groups_needed(model_parallel_size):
        return
    if not torch.distributed.is_initialized():
        raise RuntimeError(
            f"model_parallel_size={model_parallel_size} needs torch.distributed, which is not initialised, and "
            "building a model does not start it. Build the model after sat.get_args(), load it with "
            f"from_pretrained, or call sat.runtime.ensure_model_parallel({model_parallel_size}) first "
            f"(under torchrun --nproc-per-node {model_parallel_size})."
        )
    mpu.initialize_model_parallel(model_parallel_size)


def global_rank() -> int:
    """This process's rank in ``torch.distributed`` (0 without a process group)."""
    return torch.distributed.get_rank() if _distributed() else 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if _distributed():
        torch.distributed.barrier()


def from_rank0(value):
    """Rank 0's ``value`` (any picklable object) on every rank: a decision from the file system,
    which must not differ between ranks. ``value`` itself without a process group."""
    if not _distributed():
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _groups_needed(model_parallel_size: int) -> bool:
    """Whether groups of ``model_parallel_size`` still have to be created (False when they exist,
    or at size 1); raises when groups of another size exist."""
    current = mpu.get_model_parallel_world_size()
    if current == model_parallel_size:
        return False
    if mpu.model_parallel_is_initialized():
        raise ValueError(
            f"model_parallel_size={model_parallel_size}, but the model-parallel groups were created with size "
            f"{current}; call sat.mpu.destroy_model_parallel() first to change it"
        )
    return True


# ----------------------------------------------------------------------------- seeds
def set_random_seed(seed: int | None) -> None:
    """Seed Python, NumPy and torch (CPU, CUDA and the model-parallel tracker)."""
    global _GLOBAL_RANDOM_SEED
    if seed is None:
        return
    if seed <= 0:
        raise ValueError(f"seed must be positive, got {seed}")
    _GLOBAL_RANDOM_SEED = seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    mpu.model_parallel_cuda_manual_seed(seed)


def reset_random_seed(scale: int = 1) -> None:
    """Re-seed with the last seed times ``scale``."""
    if _GLOBAL_RANDOM_SEED is None:
        raise RuntimeError("set_random_seed was never called")
    set_random_seed(_GLOBAL_RANDOM_SEED * scale)


# ----------------------------------------------------------------------------- device and dtype
def resolve_device(args) -> torch.device:
    """The device a model described by ``args`` runs on: the one ``args.device`` names (an
    index means that CUDA device); when unset (``-1`` or absent), the CUDA device of
    ``args.local_rank`` (or the current one), or CPU without CUDA."""
    device = getattr(args, "device", None)
    if device is None or device == -1:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank = getattr(args, "local_rank", None)
        return torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def assign_device(args) -> torch.device:
    """``resolve_device(args)``, also recorded as ``args.device`` in the original library's
    public form (a CUDA index, or ``"cpu"``), which user scripts compare and pass to ``.to``."""
    device = resolve_device(args)
    args.device = device.index if device.type == "cuda" else device.type
    return device


def init_device(args) -> torch.device:
    """Where a model's weights are created: CPU, or with ``args.use_gpu_initialization`` the
    model's CUDA device."""
    if not getattr(args, "use_gpu_initialization", False):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("use_gpu_initialization is set but CUDA is not available")
    device = resolve_device(args)
    # A model that runs on the CPU may still be initialised on the GPU (faster), then moved.
    return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def dtype_from_args(args) -> torch.dtype:
    """The parameter dtype ``args.fp16`` / ``args.bf16`` ask for (float32 otherwise)."""
    if getattr(args, "fp16", False):
        return torch.half
    if getattr(args, "bf16", False):
        return torch.bfloat16
    return torch.float32


# ----------------------------------------------------------------------------- ZeRO-3
def check_if_zero3(args: argparse.Namespace) -> bool:
    """True when ``args`` asks for DeepSpeed ZeRO stage 3."""
    config = getattr(args, "deepspeed_config", None)
    if isinstance(config, dict):
        return config.get("zero_optimization", {}).get("stage", 0) == 3
    return getattr(args, "zero_stage", 0) == 3 and getattr(args, "deepspeed", False)


def is_zero3_partitioned(module: torch.nn.Module) -> bool:
    """Whether ZeRO-3 (``deepspeed.zero.Init``) has partitioned ``module``'s parameters: DeepSpeed
    tags each partitioned parameter with a ``ds_id``."""
    return any(hasattr(p, "ds_id") for p in module.parameters())
