"""Checkpoints in the original library's layout, readable and writable by both.

::

    <save>/latest                               the last iteration ("1000") or "release"
    <save>/model_config.json                    model_class, architecture and model arguments
    <save>/<iteration>/mp_rank_00_model_states.pt   {"module": state_dict, ...}, one per MP rank

Every file is written to a temporary name and renamed into place, and ``latest`` moves last: a
crash mid-save leaves the previous checkpoint loadable. Files are read with
``torch.load(weights_only=True)``: no code runs, and a model built with ``skip_init`` takes the
file's tensors without a second copy in memory. Saving a DeepSpeed engine (the training state)
is ``sat.training.checkpointing``'s job.

One job per module: ``layout`` (names and directories), ``atomic`` (writes), ``reading`` (safe
reads), ``model_config`` (the ``model_config.json`` schema), ``state_dict`` (loading tensors into
a module), ``rng`` (random states), ``loading`` (``load_checkpoint``), ``saving`` (a plain module).
"""

from sat.checkpoint.atomic import atomic_torch_save, atomic_write_text
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import (
    MODEL_CONFIG,
    get_checkpoint_iteration,
    get_checkpoint_name,
    get_checkpoint_tracker_filename,
    is_hf_directory,
    model_config_path,
    read_latest,
    rng_states_path,
    saved_model_parallel_size,
    shard_path,
)
from sat.checkpoint.loading import load_checkpoint
from sat.checkpoint.model_config import (
    extract_model_specific_args_from_model,
    extract_model_specific_args_to_dump,
    save_model_config,
)
from sat.checkpoint.reading import read_checkpoint_file
from sat.checkpoint.rng import restore_rng_states, rng_states
from sat.checkpoint.saving import publish_checkpoint, save_dir_of, save_module_checkpoint
from sat.checkpoint.state_dict import load_state_dict_into, unwrap_module

__all__ = [
    "MODEL_CONFIG",
    "CheckpointError",
    "atomic_torch_save",
    "atomic_write_text",
    "extract_model_specific_args_from_model",
    "extract_model_specific_args_to_dump",
    "get_checkpoint_iteration",
    "get_checkpoint_name",
    "get_checkpoint_tracker_filename",
    "is_hf_directory",
    "load_checkpoint",
    "load_state_dict_into",
    "model_config_path",
    "publish_checkpoint",
    "read_checkpoint_file",
    "read_latest",
    "restore_rng_states",
    "rng_states",
    "rng_states_path",
    "save_dir_of",
    "save_model_config",
    "save_module_checkpoint",
    "saved_model_parallel_size",
    "shard_path",
    "unwrap_module",
]
