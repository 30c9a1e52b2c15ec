"""Broadcasting a batch from model-parallel rank 0 to the other ranks of its group."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from sat.mpu.initialize import (
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_src_rank,
    get_model_parallel_world_size,
)


def broadcast_data(keys: list[str], data: dict[str, torch.Tensor], datatype: torch.dtype) -> dict[str, torch.Tensor]:
    """Return ``{key: tensor}`` as held by model-parallel rank 0, cast to ``datatype``.

    Only rank 0 of each model-parallel group needs to load the batch; the other ranks may pass
    anything for ``data``.
    """
    if get_model_parallel_world_size() == 1:
        return {key: data[key].to(datatype) for key in keys}
    group, src = get_model_parallel_group(), get_model_parallel_src_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    is_src = get_model_parallel_rank() == 0
    shapes = [[list(data[key].shape) for key in keys] if is_src else None]
    dist.broadcast_object_list(shapes, src, group=group)
    shapes = shapes[0]
    if is_src:
        flat = torch.cat([data[key].to(device=device, dtype=datatype).reshape(-1) for key in keys])
    else:
        flat = torch.empty(sum(math.prod(shape) for shape in shapes), dtype=datatype, device=device)
    dist.broadcast(flat, src, group=group)
    output, offset = {}, 0
    for key, shape in zip(keys, shapes):
        numel = math.prod(shape)
        output[key] = flat[offset : offset + numel].view(shape)
        offset += numel
    return output
