"""Loading weights that only global rank 0 has read: the other ranks build their model on ``meta``
and receive its tensors by collectives, one layer at a time.

Rank 0 sends the metadata first (every key's dtype and shape, grouped by layer, in one
``broadcast_object_list``), then the tensors of one group after another; a receiver allocates
only the tensors of the group in flight, and they become its parameters as they arrive
(``load_state_dict_into``). No rank holds more than its copy of the model plus one layer.

Two routes: ``broadcast_state_from_rank0`` gives every rank of a group the same state (data
parallelism, FSDP's meta-device initialisation); ``distribute_shards_from_rank0`` gives each
rank its model-parallel shard: rank 0 sends shard ``r`` to model-parallel rank ``r`` of its own
model-parallel group (the ranks of data-parallel rank 0), which broadcasts it over its
data-parallel group. Transfers run on the backend's device (CUDA for NCCL, CPU for gloo). The
file pages of a shard rank 0 sent away are released once sent, so rank 0 holds its own shard,
not every rank's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from sat import mpu
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.page_release import release_pages
from sat.checkpoint.state_dict import load_state_dict_into

T = TypeVar("T")
_LAYER = re.compile(r"^(.*?(?:^|\.)layers\.\d+)\.")  # "transformer.layers.3." -> one group per layer


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver allocates for one key: the dtype and each target's shape."""

    key: str
    dtype: torch.dtype
    shapes: tuple[tuple[int, ...], ...]


def share_from_rank0(compute: Callable[[], T], group: dist.ProcessGroup | None = None) -> T:
    """``compute()`` run on rank 0 of ``group`` (default: the world) and its picklable result on
    every rank of it; an exception there is raised on every rank (a CheckpointError elsewhere,
    with rank 0's message), so no rank waits for a collective that never comes."""
    src = dist.get_global_rank(group, 0) if group is not None else 0
    holder: list = [None]
    error = None
    if dist.get_rank() == src:
        try:
            holder[0] = ("ok", compute())
        except Exception as e:  # re-raised below, after the other ranks heard of it
            error, holder[0] = e, ("error", f"{type(e).__name__}: {e}")
    dist.broadcast_object_list(holder, src=src, group=group, device=_comm_device(group))
    status, value = holder[0]
    if error is not None:
        raise error
    if status == "error":
        raise CheckpointError(f"rank {src} failed to read the checkpoint: {value}")
    return value


def layer_groups(keys: Sequence[str]) -> list[list[str]]:
    """``keys`` in groups of one transformer layer each (``...layers.<n>.``), every other key in
    one group of its own, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        match = _LAYER.match(key)
        groups.setdefault(match.group(1) if match else "", []).append(key)
    return list(groups.values())


def broadcast_state_from_rank0(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor] | None,
    group: dist.ProcessGroup | None = None,
    device: torch.device | str | None = None,
) -> tuple[list[str], list[str]]:
    """Load rank 0's ``state`` into ``module`` on every rank of ``group`` (default: the world):
    rank 0 of the group passes the state dict, the others ``None`` and a ``module`` built on
    ``meta`` (or with real weights, which are copied into). Returns ``(missing, unexpected)``
    keys, as ``load_state_dict_into``. ``device``: where the weights go (default: the
    backend's device)."""
    src = dist.get_global_rank(group, 0) if group is not None else 0
    route = _Route(world=group, src=src, sends=[], index=0)
    targets = None if state is None else (lambda key: [state[key]])
    keys = None if state is None else list(state)
    return _receive(module, route, keys, targets, device, share_group=group)


def distribute_shards_from_rank0(
    module: torch.nn.Module,
    keys: Sequence[str] | None,
    shards_of: Callable[[str], list[torch.Tensor]] | None,
    device: torch.device | str | None = None,
) -> tuple[list[str], list[str]]:
    """Load each rank's model-parallel shard into ``module`` from global rank 0, which passes the
    state-dict ``keys`` and ``shards_of(key)``: the tensor of every model-parallel rank, in rank
    order (the others pass ``None`` for both). Returns ``(missing, unexpected)`` keys."""
    size = mpu.get_model_parallel_world_size()
    rank = dist.get_rank()
    if rank == 0 and mpu.get_model_parallel_rank() != 0:
        raise RuntimeError("global rank 0 must be model-parallel rank 0 (sat.mpu's layout)")
    # Ranks 0..size-1 are data-parallel rank 0 of each model-parallel rank (sat.mpu's layout).
    sends = list(range(1, size)) if rank == 0 else ([0] if mpu.get_data_parallel_rank() == 0 and rank else [])
    route = _Route(
        world=mpu.get_data_parallel_group() if mpu.get_data_parallel_world_size() > 1 else None,
        src=mpu.get_model_parallel_rank(),
        sends=sends,
        index=mpu.get_model_parallel_rank(),
        point_to_point=size > 1,
        broadcast=mpu.get_data_parallel_world_size() > 1,
    )
    return _receive(module, route, keys, shards_of, device)


@dataclass(frozen=True)
class _Route:
    """How one tensor reaches this rank. ``sends``: on rank 0, the ranks it sends targets
    ``1..`` to point to point; on such a rank, ``[0]``. Then a broadcast over ``world`` from
    ``src`` (when ``broadcast``). ``index``: which target this rank keeps."""

    world: dist.ProcessGroup | None
    src: int
    sends: list[int]
    index: int
    point_to_point: bool = False
    broadcast: bool = True

    def transfer(self, targets: list[torch.Tensor] | None, buffer: torch.Tensor, comm: torch.device) -> None:
        """Fill ``buffer`` with this rank's target; ``targets`` on global rank 0 only."""
        if self.point_to_point:
            if targets is not None:
                for destination in self.sends:
                    sent = _bytes(targets[destination].to(comm))
                    dist.send(sent, dst=destination)
                    release_pages(sent)  # another rank's shard: its file pages need not stay here
            elif self.sends:
                dist.recv(_bytes(buffer), src=self.sends[0])
        if self.broadcast:
            dist.broadcast(_bytes(buffer), src=self.src, group=self.world)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat ``uint8`` view (every dtype, bool included, travels the same way)."""
    return tensor.reshape(-1).view(torch.uint8)


def _comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where a backend's collectives take their tensors: CUDA for NCCL, CPU otherwise."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _metadata(keys: Sequence[str], targets: Callable[[str], list[torch.Tensor]]) -> list[list[TensorMeta]]:
    return [
        [TensorMeta(key, (ts := targets(key))[0].dtype, tuple(tuple(t.shape) for t in ts)) for key in group]
        for group in layer_groups(keys)
    ]


def _receive(
    module: torch.nn.Module,
    route: _Route,
    keys: Sequence[str] | None,
    targets: Callable[[str], list[torch.Tensor]] | None,
    device: torch.device | str | None,
    share_group: dist.ProcessGroup | None = None,
) -> tuple[list[str], list[str]]:
    """Metadata over ``share_group`` (every rank that takes part), then each layer's tensors
    along ``route``, loaded into ``module`` as they arrive."""
    comm = _comm_device(route.world)
    device = torch.device(device) if device is not None else comm
    meta_targets = None if targets is None else (lambda key: [t.to("meta") for t in targets(key)])
    groups = share_from_rank0(lambda: _metadata(keys, meta_targets), share_group)
    own = set(module.state_dict(keep_vars=True))
    loaded: set[str] = set()
    unexpected: list[str] = []
    for group in groups:
        state = {}
        for meta in group:
            tensors = targets(meta.key) if targets is not None else None
            if tensors is not None and route.index == 0:
                buffer = tensors[0].to(comm).contiguous()  # rank 0's own target: no copy on CPU
            else:
                buffer = torch.empty(meta.shapes[route.index], dtype=meta.dtype, device=comm)
            if buffer.numel():
                route.transfer(tensors, buffer, comm)
            state[meta.key] = buffer
        missing_here, unexpected_here = load_state_dict_into(module, state, device)
        loaded |= own - set(missing_here)
        unexpected += unexpected_here
    return [key for key in module.state_dict(keep_vars=True) if key not in loaded], unexpected
