"""Saving a plain module (not a DeepSpeed engine) in the original layout, and the last step of
every save: ``model_config.json``, then ``latest``."""

from __future__ import annotations

import os

import torch

from sat import mpu
from sat.checkpoint.atomic import atomic_write_text
from sat.checkpoint.layout import get_checkpoint_name, get_checkpoint_tracker_filename
from sat.checkpoint.manifest import seal_directory
from sat.checkpoint.model_config import save_model_config
from sat.checkpoint.state_dict import unwrap_module
from sat.checkpoint.writing import checkpoint_format_of, write_model_states
from sat.helpers import print_rank0
from sat.runtime import barrier, global_rank


def save_dir_of(args) -> str:
    """``args.save``, the checkpoint directory to write; a ValueError when it is not set."""
    if not getattr(args, "save", None):
        raise ValueError("save_checkpoint needs args.save, the directory to write to")
    return args.save


def save_module_checkpoint(iteration: int, model: torch.nn.Module, args) -> None:
    """Save the weights of ``model`` as ``<args.save>/<iteration>``, one file per model-parallel
    rank (written by the first data-parallel copy) and its manifest, and point ``latest`` at it.
    Every rank must call it."""
    save_dir = save_dir_of(args)
    module = unwrap_module(model)
    path = get_checkpoint_name(save_dir, iteration)
    if mpu.get_data_parallel_rank() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        checkpoint_format, max_shard_size = checkpoint_format_of(args)
        print_rank0(f"saving checkpoint {os.path.dirname(path)} ({checkpoint_format})")
        write_model_states({"module": module.state_dict()}, path, checkpoint_format, max_shard_size)
    barrier()
    seal_directory(os.path.dirname(path))
    barrier()
    if global_rank() == 0:
        publish_checkpoint(iteration, module, args, save_dir)
    barrier()


def publish_checkpoint(iteration: int, model: torch.nn.Module, args, save_dir: str) -> None:
    """Rank 0's last step of a save, once ``<save_dir>/<iteration>`` is complete: write
    ``model_config.json``, then move ``latest`` to ``iteration`` (last, so a crash before it
    leaves the previous checkpoint current)."""
    save_model_config(args, model, save_dir)
    atomic_write_text(get_checkpoint_tracker_filename(save_dir), str(iteration))
