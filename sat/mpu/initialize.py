"""Model-parallel, data-parallel and node process groups.

With ``world_size`` ranks and model-parallel size ``mp``, ranks ``[i*mp, (i+1)*mp)`` form a
model-parallel group and ranks ``i, i+mp, i+2mp, ...`` a data-parallel group (Megatron's
layout: the ranks of one model copy are neighbours, so they share a node). Node groups hold
the ranks of one machine (``LOCAL_WORLD_SIZE`` from torchrun, or ``LOCAL_SIZE`` from the
deepspeed launcher).

Nothing here creates a group unless ``initialize_model_parallel`` is called. Before that,
every accessor answers for a single model-parallel rank: model-parallel size 1, and data
parallelism over the whole ``torch.distributed`` world if one exists.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from sat.helpers import print_rank0
from sat.mpu.utils import ensure_divisibility

_MODEL_PARALLEL_GROUP: dist.ProcessGroup | None = None
_DATA_PARALLEL_GROUP: dist.ProcessGroup | None = None
_NODE_GROUP: dist.ProcessGroup | None = None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def initialize_model_parallel(model_parallel_size: int) -> None:
    """Create the model-, data- and node-parallel groups (``torch.distributed`` must be up)."""
    global _MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _NODE_GROUP
    if not _distributed():
        raise RuntimeError(
            "initialize_model_parallel needs torch.distributed to be initialised first "
            "(launch with torchrun/deepspeed and call sat.runtime.initialize_distributed)."
        )
    if model_parallel_is_initialized():
        raise RuntimeError("model parallel groups are already initialised; call destroy_model_parallel first")
    world_size = dist.get_world_size()
    rank = dist.get_rank()
    ensure_divisibility(world_size, model_parallel_size)
    print_rank0(f"> initializing model parallel with size {model_parallel_size}")

    for i in range(model_parallel_size):
        group = dist.new_group(list(range(i, world_size, model_parallel_size)))
        if i == rank % model_parallel_size:
            _DATA_PARALLEL_GROUP = group
    for i in range(world_size // model_parallel_size):
        group = dist.new_group(list(range(i * model_parallel_size, (i + 1) * model_parallel_size)))
        if i == rank // model_parallel_size:
            _MODEL_PARALLEL_GROUP = group

    local_world_size = _local_world_size(world_size)
    ensure_divisibility(world_size, local_world_size)
    for i in range(world_size // local_world_size):
        group = dist.new_group(list(range(i * local_world_size, (i + 1) * local_world_size)))
        if i == rank // local_world_size:
            _NODE_GROUP = group


# Ranks per node as launchers announce it: torchrun sets LOCAL_WORLD_SIZE, the deepspeed
# launcher LOCAL_SIZE.
_LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE")


def _local_world_size(world_size: int) -> int:
    """The number of ranks per node, from the launcher's environment, else guessed."""
    for variable in _LOCAL_SIZE_VARIABLES:
        if os.environ.get(variable):
            return int(os.environ[variable])
    if world_size == 1:  # a single process is a single node: nothing to guess
        return 1
    # One node per GPU count; a CPU-only run is taken to be one node.
    guess = min(world_size, torch.cuda.device_count()) if torch.cuda.is_available() else world_size
    print_rank0(
        f"neither LOCAL_WORLD_SIZE (torchrun) nor LOCAL_SIZE (deepspeed launcher) is set; assuming {guess} "
        "ranks per node. Set LOCAL_WORLD_SIZE if this is wrong.",
        level="WARNING",
    )
    return guess


def model_parallel_is_initialized() -> bool:
    """Whether ``initialize_model_parallel`` has created the groups."""
    return _MODEL_PARALLEL_GROUP is not None and _DATA_PARALLEL_GROUP is not None


def destroy_model_parallel() -> None:
    """Forget the groups (they are not destroyed in ``torch.distributed``)."""
    global _MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _NODE_GROUP
    _MODEL_PARALLEL_GROUP = _DATA_PARALLEL_GROUP = _NODE_GROUP = None


def get_model_parallel_group() -> dist.ProcessGroup:
    """The model-parallel group of this rank."""
    if _MODEL_PARALLEL_GROUP is None:
        raise RuntimeError("model parallel group is not initialized (call initialize_model_parallel)")
    return _MODEL_PARALLEL_GROUP


def get_model_parallel_world_size() -> int:
    """Number of ranks that hold shards of one model copy (1 without model parallelism)."""
    if _MODEL_PARALLEL_GROUP is None:
        return 1
    return dist.get_world_size(group=_MODEL_PARALLEL_GROUP)


def get_model_parallel_rank() -> int:
    """This rank's index in its model-parallel group (0 without model parallelism)."""
    if _MODEL_PARALLEL_GROUP is None:
        return 0
    return dist.get_rank(group=_MODEL_PARALLEL_GROUP)


def get_model_parallel_src_rank() -> int:
    """Global rank of model-parallel rank 0 in this rank's group."""
    if not _distributed():
        return 0
    size = get_model_parallel_world_size()
    return (dist.get_rank() // size) * size


def get_data_parallel_group() -> dist.ProcessGroup:
    """The data-parallel group of this rank (the whole world without model parallelism)."""
    if _DATA_PARALLEL_GROUP is not None:
        return _DATA_PARALLEL_GROUP
    if _distributed():
        return dist.group.WORLD
    raise RuntimeError("data parallel group is not initialized: torch.distributed is not running")


def get_data_parallel_world_size() -> int:
    """Number of model copies trained in parallel."""
    if _DATA_PARALLEL_GROUP is not None:
        return dist.get_world_size(group=_DATA_PARALLEL_GROUP)
    return dist.get_world_size() if _distributed() else 1


def get_data_parallel_rank() -> int:
    """This rank's index among the model copies."""
    if _DATA_PARALLEL_GROUP is not None:
        return dist.get_rank(group=_DATA_PARALLEL_GROUP)
    return dist.get_rank() if _distributed() else 0


def get_node_group() -> dist.ProcessGroup:
    """The ranks on this machine."""
    if _NODE_GROUP is None:
        raise RuntimeError("node group is not initialized (call initialize_model_parallel)")
    return _NODE_GROUP


def get_node_world_size() -> int:
    """Number of ranks on this machine."""
    if _NODE_GROUP is None:
        return 1
    return dist.get_world_size(group=_NODE_GROUP)


def get_node_rank() -> int:
    """This rank's index on its machine."""
    if _NODE_GROUP is None:
        return 0
    return dist.get_rank(group=_NODE_GROUP)


def get_node_src_rank() -> int:
    """Global rank of the first rank on this machine."""
    if not _distributed():
        return 0
    size = get_node_world_size()
    return (dist.get_rank() // size) * size
