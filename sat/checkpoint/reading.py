"""Reading a checkpoint file safely: ``torch.load(weights_only=True)``, memory-mapped, with
errors that say what is wrong with the file."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np
import torch

from sat.checkpoint.errors import CheckpointError

# What the original library's ``np.random.get_state()`` array pickles as: plain data.
_NUMPY_STATE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


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
