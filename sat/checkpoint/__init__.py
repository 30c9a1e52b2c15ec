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
a module), ``rng`` (random states), ``loading`` (``load_checkpoint``), ``saving`` (a plain module),
``dtypes`` (the dtype to load in), ``conversion`` (one tensor to it, without keeping the source),
``destinations`` (a device map: each tensor's device, or the offload folder), ``writing`` (a
rank's checkpoint as ``.pt`` or safetensors), ``safetensors_files`` (sharded safetensors, written
tensor by tensor and read memory-mapped).
"""

from sat.checkpoint.atomic import atomic_torch_save, atomic_write, atomic_write_text
from sat.checkpoint.destinations import DISK, Destinations
from sat.checkpoint.dtypes import DtypeArg, resolve_dtype, saved_dtype, set_dtype_flags
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import (
    MODEL_CONFIG,
    get_checkpoint_iteration,
    get_checkpoint_name,
    get_checkpoint_tracker_filename,
    is_hf_directory,
    is_shard_path,
    model_config_path,
    model_states_stem,
    read_latest,
    rng_states_path,
    saved_model_parallel_size,
    shard_path,
    shard_path_of_safetensors,
    split_shard_path,
)
from sat.checkpoint.loading import load_checkpoint, saved_checkpoint_dtype
from sat.checkpoint.model_config import (
    extract_model_specific_args_from_model,
    extract_model_specific_args_to_dump,
    read_model_config,
    save_model_config,
)
from sat.checkpoint.reading import load_torch_file, read_checkpoint_file, saved_format
from sat.checkpoint.rng import restore_rng_states, rng_states
from sat.checkpoint.safetensors_files import (
    SafetensorsState,
    entry_file,
    parse_size,
    read_weight_map,
    save_safetensors,
)
from sat.checkpoint.saving import publish_checkpoint, save_dir_of, save_module_checkpoint
from sat.checkpoint.state_dict import load_state_dict_into, unwrap_module
from sat.checkpoint.writing import (
    DEFAULT_MAX_SHARD_SIZE,
    FORMATS,
    checkpoint_format_of,
    save_checkpoint_file,
    write_model_states,
)

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "FORMATS",
    "SafetensorsState",
    "atomic_write",
    "checkpoint_format_of",
    "model_states_stem",
    "parse_size",
    "save_safetensors",
    "is_shard_path",
    "load_torch_file",
    "read_weight_map",
    "save_checkpoint_file",
    "saved_format",
    "entry_file",
    "shard_path_of_safetensors",
    "split_shard_path",
    "write_model_states",
    "DISK",
    "Destinations",
    "DtypeArg",
    "resolve_dtype",
    "saved_checkpoint_dtype",
    "saved_dtype",
    "set_dtype_flags",
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
    "read_model_config",
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
