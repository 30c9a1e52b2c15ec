"""Splitting or merging a checkpoint directory, the original's ``sat.mpu.operation`` names.

The original declared ``mp_split_checkpoint(path)`` and ``mp_merge_checkpoint(path)`` and left
them unimplemented. Here they write a resharded copy next to ``path`` with
``sat.tools.reshard.reshard_checkpoint`` and return its directory; ``path`` is never changed.
Call them in one process (a script, or rank 0 followed by a barrier): every caller writes the
same files.
"""

from __future__ import annotations

from sat.mpu import get_model_parallel_world_size
from sat.tools.reshard import reshard_checkpoint


def mp_split_checkpoint(path: str, model_parallel_size: int | None = None, target: str | None = None) -> str:
    """Write the checkpoint directory ``path`` split to ``model_parallel_size`` (default: the
    current model-parallel size) into ``target`` (default ``{path}-mp{size}``); return ``target``."""
    size = model_parallel_size or get_model_parallel_world_size()
    target = target or f"{path.rstrip('/')}-mp{size}"
    reshard_checkpoint(path, target, size)
    return target


def mp_merge_checkpoint(path: str, target: str | None = None) -> str:
    """Write the checkpoint directory ``path`` merged to model-parallel size 1 into ``target``
    (default ``{path}-mp1``); return ``target``."""
    return mp_split_checkpoint(path, 1, target)
