"""Changing the model-parallel size of a state dict: pure functions, no files, no model classes.

A checkpoint saved with model-parallel size ``a`` has one state dict per rank. For size ``b``,
each partitioned parameter (``sat.mpu.partition.partition_spec``) is merged from the ``a`` shards
and split into ``b``, one parameter at a time: given memory-mapped sources, no rank ever holds the
whole model. Replicated parameters come from rank 0's state.

``load_checkpoint`` (``sat.checkpoint``) reshards at load time; the offline tool is
``python -m sat.tools.reshard`` (``python -m sat.mpu.reshard`` still runs it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sat.helpers import moved_names
from sat.mpu.partition import Stride, merge_strided, partition_spec, split_strided

Spec = tuple[int, Stride] | None


def partition_specs(module: torch.nn.Module) -> dict[str, Spec]:
    """Each state-dict key of ``module`` with its partition ``(dim, stride)`` or ``None``."""
    return {key: partition_spec(tensor) for key, tensor in module.state_dict(keep_vars=True).items()}


def reshard_tensor(shards: list[torch.Tensor], spec: Spec, size: int, key: str) -> list[torch.Tensor]:
    """The ``size`` new shards of one parameter from its old shards."""
    if spec is None:
        if any(shard.shape != shards[0].shape for shard in shards):
            raise ValueError(
                f"{key} has different shapes on different model-parallel ranks but is not marked as partitioned "
                "(sat.mpu.partition.mark_partitioned)"
            )
        return [shards[0]] * size
    dim, stride = spec
    return split_strided(merge_strided(shards, stride, dim), size, stride, dim)


def reshard_state(
    sources: list[Mapping[str, torch.Tensor]], specs: Mapping[str, Spec], size: int, rank: int
) -> dict[str, torch.Tensor]:
    """Model-parallel rank ``rank`` of ``size``'s state dict, from every old rank's state dict.
    Keys the model does not know are kept as in rank 0 (load reports them as unexpected)."""
    state = {}
    for key in sources[0]:
        shards = [source[key] for source in sources]
        state[key] = reshard_tensor(shards, specs.get(key), size, key)[rank] if key in specs else shards[0]
    return state


__getattr__ = moved_names(
    __name__,
    {
        "main": "sat.tools.reshard",
        "reshard_checkpoint": "sat.tools.reshard",
        "saved_model_parallel_size": "sat.checkpoint.layout",
        "shard_path": "sat.checkpoint.layout",
    },
)

if __name__ == "__main__":  # the offline tool's old command line
    import runpy

    runpy.run_module("sat.tools.reshard", run_name="__main__", alter_sys=True)
