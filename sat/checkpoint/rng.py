"""Random states in a checkpoint: saved in the original library's keys, as plain data that
``weights_only`` can load, and restored."""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch

from sat import mpu
from sat.helpers import print_rank0


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


def restore_saved_rng(state: Mapping, path: str) -> None:
    """``restore_rng_states`` of the checkpoint file ``path``'s ``state``; a warning, and fresh
    random streams, when it holds none."""
    wanted = ("random_rng_state", "np_rng_state", "torch_rng_state")
    if not all(key in state for key in wanted):
        print_rank0(f"{path} holds no random states; the random streams start fresh.", level="WARNING")
        return
    restore_rng_states(state)


def _as_tuples(value):
    # random.setstate needs tuples; a round trip through some serialisers gives lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
