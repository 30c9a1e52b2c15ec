"""Reading a checkpoint file safely: ``torch.load(weights_only=True)``, memory-mapped, with
errors that say what is wrong with the file."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import EXTRA_SUFFIX, model_states_stem, split_shard_path
from sat.checkpoint.manifest import check_file
from sat.checkpoint.safetensors_files import SafetensorsState, has_safetensors, safetensors_files

# What the original library's ``np.random.get_state()`` array pickles as: plain data.
_NUMPY_STATE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def read_checkpoint_file(path: str) -> dict:
    """Load a checkpoint file safely (``weights_only``), memory-mapped when possible, after checking
    its size against the directory's manifest (when there is one).

    ``path`` names a rank's ``.pt`` file (``shard_path``); a rank saved as safetensors is read
    from its files instead (``layout``): ``"module"`` is then a ``SafetensorsState`` (tensors
    memory-mapped, shard by shard) and the other entries come from its ``.extra.pt``.
    """
    if path.endswith(".pt") and has_safetensors(*split_shard_path(path)):
        return _read_safetensors_checkpoint(path)
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else "the folder does not exist"
        raise CheckpointError(
            f"missing checkpoint file {path} (present: {present}). A different model_parallel_size "
            "or iteration than the checkpoint was saved with?"
        )
    check_file(path)
    state = load_torch_file(path)
    if not isinstance(state, Mapping) or "module" not in state:
        keys = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{path} has no 'module' entry (found {keys}); not a sat checkpoint")
    return state


def load_torch_file(path: str, *, map_location=None, extra_globals: Sequence = ()):
    """``torch.load(path)`` with ``weights_only`` (only tensors, plain data and the classes of
    ``extra_globals``: a pickle that would run code is refused, never executed), memory-mapped
    when the file's format allows it, onto ``map_location`` (default the CPU); a
    ``CheckpointError`` naming the file when it is unsafe, corrupt or truncated."""
    map_location = "cpu" if map_location is None else map_location
    try:
        with torch.serialization.safe_globals([*_NUMPY_STATE_GLOBALS, *extra_globals]):
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects that are not safe to load (weights_only refused): {e}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e


def saved_format(iteration_dir: str) -> str:
    """The format model-parallel rank 0 of ``iteration_dir`` was saved in: ``"pt"`` or ``"safetensors"``."""
    return "safetensors" if has_safetensors(iteration_dir, model_states_stem(0)) else "pt"


def _read_safetensors_checkpoint(path: str) -> dict:
    """The checkpoint of the rank whose ``.pt`` name is ``path``, from its safetensors files."""
    iteration_dir, stem = split_shard_path(path)
    if os.path.isfile(path):
        raise CheckpointError(
            f"{iteration_dir} holds both {os.path.basename(path)} and safetensors files of the same rank "
            f"({safetensors_files(iteration_dir, stem)}): remove the ones that are not the checkpoint"
        )
    module = SafetensorsState(iteration_dir, stem)
    for file in module.files:
        check_file(file)
    extra = os.path.join(iteration_dir, stem + EXTRA_SUFFIX)
    if not os.path.isfile(extra):
        return {"module": module}
    check_file(extra)
    extras = load_torch_file(extra)
    if not isinstance(extras, Mapping):
        raise CheckpointError(f"{extra} should hold a dict of the checkpoint's entries, found {type(extras).__name__}")
    return {**extras, "module": module}
