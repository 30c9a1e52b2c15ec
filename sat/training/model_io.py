"""The original library's checkpoint module, kept as a re-export: the functions live in
``sat.checkpoint`` (layout, reading, loading, a plain module's save) and
``sat.training.checkpointing`` (``save_checkpoint`` of an engine or module, resuming training) and
``sat.training.ema`` (the EMA weights of ``FusedEmaAdam``)."""

from sat.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    extract_model_specific_args_from_model,
    extract_model_specific_args_to_dump,
    get_checkpoint_iteration,
    get_checkpoint_name,
    get_checkpoint_tracker_filename,
    load_checkpoint,
    load_state_dict_into,
    read_checkpoint_file,
    restore_rng_states,
    rng_states,
    save_model_config,
)
from sat.training.checkpointing import (
    is_deepspeed_engine,
    load_training_state,
    save_checkpoint,
    use_safe_checkpoint_engine,
)
from sat.training.ema import restore_ema_parameters_back, update_ema_parameters_to_model

__all__ = [
    "CheckpointError",
    "atomic_torch_save",
    "atomic_write_text",
    "extract_model_specific_args_from_model",
    "extract_model_specific_args_to_dump",
    "get_checkpoint_iteration",
    "get_checkpoint_name",
    "get_checkpoint_tracker_filename",
    "is_deepspeed_engine",
    "load_checkpoint",
    "load_state_dict_into",
    "load_training_state",
    "read_checkpoint_file",
    "restore_ema_parameters_back",
    "restore_rng_states",
    "rng_states",
    "save_checkpoint",
    "save_model_config",
    "update_ema_parameters_to_model",
    "use_safe_checkpoint_engine",
]
