"""Changing the model-parallel size of a model that is already built, inside a running job.

- ``mp_split_model(model, n)``: every process holds the full model; each keeps its own shard.
- ``mp_split_model_rank0(model, model_full)`` on the first rank of a node (or model-parallel
  group) with ``mp_split_model_receive(model)`` on the others: only the first rank holds the
  full model and sends each rank its shard of every partitioned parameter; replicated
  parameters are broadcast.
- ``mp_merge_model_rank0(model, model_full)`` on global rank 0 with ``mp_merge_model_send(model)``
  on the others: the shards are gathered into the full model on rank 0.

Which parameters are partitioned, and how, comes from their partition spec
(``sat.mpu.partition.mark_partitioned``): the parallel layers' weights and biases, and any mixin
parameter marked the same way. The checkpoint-file variants (``mp_split_checkpoint``,
``mp_merge_checkpoint``) need the file layout and live in ``sat.tools.mp_checkpoint``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sat.helpers import moved_names
from sat.mpu.initialize import (
    destroy_model_parallel,
    get_model_parallel_group,
    get_model_parallel_src_rank,
    get_model_parallel_world_size,
    get_node_group,
    get_node_src_rank,
    get_node_world_size,
    initialize_model_parallel,
)
from sat.mpu.partition import partition_spec
from sat.mpu.reshard import reshard_tensor


def mp_split_model(model: torch.nn.Module, new_model_parallel_size: int) -> None:
    """Create model-parallel groups of ``new_model_parallel_size`` and turn the full ``model``
    (built at model-parallel size 1, the same in every process) into this rank's shard, in place.
    Every module with a ``repartition()`` method takes part: the parallel layers and the
    attention modules that keep per-partition head counts."""
    destroy_model_parallel()
    initialize_model_parallel(new_model_parallel_size)
    for module in model.modules():
        repartition = getattr(module, "repartition", None)
        if callable(repartition):
            repartition()


def _split_group(use_node_group: bool) -> tuple[dist.ProcessGroup, int, int]:
    """The ranks one full model is split among: ``(group, its first global rank, its size)``."""
    if use_node_group:
        return get_node_group(), get_node_src_rank(), get_node_world_size()
    return get_model_parallel_group(), get_model_parallel_src_rank(), get_model_parallel_world_size()


@torch.no_grad()
def mp_split_model_rank0(model: torch.nn.Module, model_full: torch.nn.Module, use_node_group: bool = True) -> None:
    """Fill this rank's ``model`` (built at the current model-parallel size) from ``model_full``
    (the same architecture at size 1) and send every other rank of the node (or of the
    model-parallel group, with ``use_node_group=False``) its shard; they call
    :func:`mp_split_model_receive`. Global rank ``src + i`` gets model-parallel shard
    ``(src + i) % mp``, so a node may hold several model-parallel groups."""
    group, src, local_world_size = _split_group(use_node_group)
    mp_size = get_model_parallel_world_size()
    full_params = dict(model_full.named_parameters())
    for name, param in model.named_parameters():
        if name not in full_params:
            raise KeyError(f"mp_split_model_rank0: model_full has no parameter {name!r}; build both from one class")
        full = full_params[name].detach()
        spec = partition_spec(param)
        if spec is None:
            param.copy_(full)
            dist.broadcast(param.data, src, group=group)
            continue
        shards = reshard_tensor([full], spec, mp_size, name)
        param.copy_(shards[src % mp_size])
        for i in range(1, local_world_size):
            dist.send(shards[(src + i) % mp_size].to(param.device, param.dtype).contiguous(), src + i)


@torch.no_grad()
def mp_split_model_receive(model: torch.nn.Module, use_node_group: bool = True) -> None:
    """The other ranks' side of :func:`mp_split_model_rank0`: receive this rank's shards."""
    group, src, _ = _split_group(use_node_group)
    for param in model.parameters():
        if partition_spec(param) is None:
            dist.broadcast(param.data, src, group=group)
        else:
            dist.recv(param.data, src)


def _require_one_model_parallel_group() -> None:
    if get_model_parallel_world_size() != dist.get_world_size():
        raise ValueError(
            f"merging a model needs model_parallel_size == world size, got model_parallel_size="
            f"{get_model_parallel_world_size()} in a world of {dist.get_world_size()} processes"
        )


@torch.no_grad()
def mp_merge_model_rank0(model: torch.nn.Module, model_full: torch.nn.Module) -> None:
    """On global rank 0: gather every rank's shard of ``model`` into ``model_full`` (the same
    architecture at model-parallel size 1); the other ranks call :func:`mp_merge_model_send`.
    Replicated parameters are taken from rank 0. Needs one model-parallel group spanning the world."""
    _require_one_model_parallel_group()
    full_params = dict(model_full.named_parameters())
    for name, param in model.named_parameters():
        if name not in full_params:
            raise KeyError(f"mp_merge_model_rank0: model_full has no parameter {name!r}; build both from one class")
        full = full_params[name]
        spec = partition_spec(param)
        if spec is None:
            full.copy_(param)
            continue
        shards = [torch.empty_like(param.data) for _ in range(dist.get_world_size())]
        dist.gather(param.data.contiguous(), gather_list=shards, dst=0)
        full.copy_(reshard_tensor([shard.cpu() for shard in shards], spec, 1, name)[0])


@torch.no_grad()
def mp_merge_model_send(model: torch.nn.Module) -> None:
    """The other ranks' side of :func:`mp_merge_model_rank0`: send this rank's shards."""
    _require_one_model_parallel_group()
    for param in model.parameters():
        if partition_spec(param) is not None:
            dist.gather(param.data.contiguous(), dst=0)


__getattr__ = moved_names(
    __name__,
    {"mp_split_checkpoint": "sat.tools.mp_checkpoint", "mp_merge_checkpoint": "sat.tools.mp_checkpoint"},
)
