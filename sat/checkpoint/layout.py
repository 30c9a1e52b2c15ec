"""Where things are in a checkpoint directory, and what kind of directory it is.

::

    <save>/latest                                   the last iteration ("1000") or "release"
    <save>/model_config.json                        model_class, architecture and model arguments
    <save>/<iteration>/mp_rank_XX_model_states.pt   {"module": state_dict, ...}, one per MP rank
    <save>/<iteration>/rng_states_rank_XXXXX.pt     each rank's random states (training saves)

or, saved with ``--checkpoint-format safetensors``, per model-parallel rank::

    mp_rank_XX_model_states.safetensors             the module's tensors, or past --max-shard-size
    mp_rank_XX_model_states-00001-of-0000N.safetensors ...  shards, named by
    mp_rank_XX_model_states.safetensors.index.json  {"weight_map": {key: shard}}
    mp_rank_XX_model_states.extra.pt                every other entry of the .pt file (iteration,
                                                    random and client states; weights_only data)
"""

from __future__ import annotations

import json
import os
import re

from sat import mpu
from sat.checkpoint.errors import CheckpointError

MODEL_CONFIG = "model_config.json"
_SHARD = re.compile(r"mp_rank_(\d+)_model_states\.(?:pt|safetensors|safetensors\.index\.json)")
_PT_SHARD = re.compile(r"mp_rank_\d+_model_states\.pt")
_SAFETENSORS_ENTRY = re.compile(r"(mp_rank_\d+_model_states)\.safetensors(?:\.index\.json)?")
EXTRA_SUFFIX = ".extra.pt"


def get_checkpoint_name(checkpoints_path: str, iteration: int | str, release: bool = False, zero: bool = False) -> str:
    """``<path>/<iteration or release>/mp_rank_XX_model_states.pt`` for this model-parallel rank."""
    directory = "release" if release else str(iteration)
    if zero:
        directory += f"_zero_dp_rank_{mpu.get_data_parallel_rank()}"
    return shard_path(os.path.join(checkpoints_path, directory), mpu.get_model_parallel_rank())


def get_checkpoint_tracker_filename(checkpoints_path: str, old_checkpoint: bool = False) -> str:
    """The ``latest`` file of a checkpoint directory."""
    return os.path.join(checkpoints_path, "latest")


def read_latest(checkpoints_path: str) -> str | None:
    """What ``latest`` says (an iteration or ``"release"``), None without a ``latest`` file."""
    tracker = get_checkpoint_tracker_filename(checkpoints_path)
    if not os.path.isfile(tracker):
        return None
    with open(tracker) as f:
        return f.read().strip()


def get_checkpoint_iteration(load_path: str) -> tuple[int, bool, bool]:
    """``(iteration, release, success)`` from ``<load_path>/latest``."""
    text = read_latest(load_path)
    if text is None:
        raise CheckpointError(
            f"{load_path} is not a sat checkpoint directory: it has no 'latest' file "
            f"(expected latest, {MODEL_CONFIG} and <iteration>/mp_rank_00_model_states.pt)"
        )
    if text == "release":
        return 0, True, True
    tracker = get_checkpoint_tracker_filename(load_path)
    try:
        iteration = int(text)
    except ValueError:
        raise CheckpointError(f"{tracker} should hold an iteration number or 'release', found {text!r}") from None
    if iteration < 0:
        raise CheckpointError(f"{tracker} holds a negative iteration {iteration}")
    return iteration, False, True


def model_states_stem(rank: int) -> str:
    """``mp_rank_XX_model_states``: the name, without suffix, of model-parallel rank ``rank``'s files."""
    return f"mp_rank_{rank:02d}_model_states"


def shard_path(iteration_dir: str, rank: int) -> str:
    """The model file of model-parallel rank ``rank`` in ``iteration_dir``: its ``.pt`` name,
    which also stands for the rank's safetensors files (``read_checkpoint_file`` reads either)."""
    return os.path.join(iteration_dir, f"{model_states_stem(rank)}.pt")


def is_shard_path(path: str) -> bool:
    """Whether ``path`` names a rank's model file (``mp_rank_XX_model_states.pt``)."""
    return _PT_SHARD.fullmatch(os.path.basename(path)) is not None


def shard_path_of_safetensors(path: str) -> str | None:
    """The ``shard_path`` (``.pt`` name) of a rank whose safetensors file (single or index) is
    ``path``; None for any other file."""
    directory, name = os.path.split(path)
    match = _SAFETENSORS_ENTRY.fullmatch(name)
    return os.path.join(directory, f"{match.group(1)}.pt") if match else None


def split_shard_path(path: str) -> tuple[str, str]:
    """``(iteration_dir, stem)`` of a ``shard_path``: where the rank's files of every format are."""
    iteration_dir, name = os.path.split(path)
    if not name.endswith(".pt"):
        raise ValueError(f"{path} is not a model file name (mp_rank_XX_model_states.pt)")
    return iteration_dir, name[: -len(".pt")]


def saved_model_parallel_size(iteration_dir: str) -> int:
    """How many model-parallel shards ``iteration_dir`` holds (``mp_rank_XX`` files of either format)."""
    ranks = sorted({int(m.group(1)) for name in os.listdir(iteration_dir) if (m := _SHARD.fullmatch(name))})
    if not ranks or ranks != list(range(len(ranks))):
        raise FileNotFoundError(
            f"{iteration_dir} holds no complete set of mp_rank_XX_model_states.pt (or .safetensors) files: {ranks}"
        )
    return len(ranks)


def rng_states_path(iteration_dir: str, rank: int) -> str:
    """The file with the random states of global rank ``rank``."""
    return os.path.join(iteration_dir, f"rng_states_rank_{rank:05d}.pt")


def model_config_path(checkpoint_dir: str) -> str:
    """``<checkpoint_dir>/model_config.json``; a CheckpointError when the directory has none."""
    path = os.path.join(checkpoint_dir, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint_dir} has no {MODEL_CONFIG}; not a sat checkpoint directory")
    return path


def is_hf_directory(path: str) -> bool:
    """A ``transformers`` model directory (``config.json`` with a ``model_type``), not a sat
    checkpoint."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config) or os.path.isfile(os.path.join(path, MODEL_CONFIG)):
        return False
    with open(config, encoding="utf-8") as f:
        return "model_type" in json.load(f)
