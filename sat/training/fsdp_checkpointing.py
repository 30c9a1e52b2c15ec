"""Checkpoints of the FSDP engine (``--engine fsdp``), in the DeepSpeed path's layout and
training-state format (``sat.training.checkpointing``), so that ``from_pretrained``, ``--load``
and the tools read them alike:

- ``<iteration>/mp_rank_00_model_states.pt``: the whole consolidated ``module`` (gathered from
  the shards, in the dtype the DeepSpeed path saves: bf16 under ``--bf16``) with the client
  state (iteration, ``client_lr_scheduler``, data position, rank 0's random states,
  ``precision``, ``dp_world_size``), plus ``"engine": "fsdp"``.
- ``<iteration>/fsdp_optim_states.pt``: the optimizer state as one full state dict keyed by
  parameter name (``torch.distributed.checkpoint.state_dict``, gathered to rank 0) and, under
  ``--bf16``, the fp32 master weights. Being whole, it resumes at any data-parallel size; the
  price is that rank 0 holds it in CPU memory while saving and loading.
- ``rng_states_rank_XXXXX.pt`` per rank, ``model_config.json``, ``latest``, and the manifest,
  written through the same partial-directory steps as a DeepSpeed save.

A DeepSpeed run resuming from an FSDP checkpoint (or the reverse) loads the weights, the
schedule and the data position, and starts the optimizer fresh, with a warning.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

from sat.checkpoint import (
    CheckpointError,
    checkpoint_format_of,
    get_checkpoint_iteration,
    get_checkpoint_name,
    load_checkpoint,
    load_torch_file,
    read_checkpoint_file,
    save_dir_of,
)
from sat.checkpoint.broadcast import share_from_rank0
from sat.checkpoint.manifest import check_file
from sat.helpers import print_rank0
from sat.runtime import global_rank
from sat.training.checkpointing import _recorded_save, restore_schedule_and_rng, save_training_checkpoint


class FSDPEngine(Protocol):
    """What saving and resuming use of ``sat.training.fsdp_engine.FSDPEngine`` (a protocol, so
    the engine imports this module and not the other way round)."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: str

    def full_states(self) -> tuple[dict, dict, dict]: ...


OPTIMIZER_FILE = "fsdp_optim_states.pt"
_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)  # rank 0 passes it whole


def load_fsdp_weights(model: torch.nn.Module, args, specific_iteration: int | None = None) -> int:
    """``--load`` for the FSDP engine, before sharding: only global rank 0 reads the checkpoint
    into its model (the others are on ``meta`` and receive the weights when it is sharded).
    Returns the iteration to continue from, on every rank (rank 0's error, on every rank)."""
    return share_from_rank0(lambda: load_checkpoint(model, args, specific_iteration=specific_iteration))


def save_fsdp_checkpoint(iteration: int, engine: FSDPEngine, lr_scheduler, args, client_state: dict) -> None:
    """Save the run as ``<args.save>/<iteration>`` (see the module docstring); every rank calls it."""
    save_dir = save_dir_of(args)
    checkpoint_format = checkpoint_format_of(args)

    def write(tag: str, state: dict, failures: list[str]) -> list[tuple[str, str]]:
        module, master, optimizer = engine.full_states()  # gathered to rank 0 (a collective)
        if global_rank() == 0:
            model_file = get_checkpoint_name(save_dir, tag)
            _recorded_save(failures, {"module": module, **state}, model_file, checkpoint_format)
            extra = {"master": master} if engine.precision != "fp32" else {}
            optimizer_file = os.path.join(save_dir, tag, OPTIMIZER_FILE)
            _recorded_save(failures, {"optimizer": optimizer, **extra}, optimizer_file, checkpoint_format)
        return []

    # "zero_stage": None: a DeepSpeed run finds no optimizer state of its own here.
    engine_state = {"engine": "fsdp", "zero_stage": None, "precision": engine.precision, **client_state}
    save_training_checkpoint(iteration, engine.module, lr_scheduler, args, engine_state, write)


def load_fsdp_training_state(engine: FSDPEngine, lr_scheduler, args, iteration: int | None = None) -> dict:
    """Continue a run from ``args.load`` after sharding: the optimizer state (and, under
    ``--bf16``, the fp32 master weights) from rank 0's read, the schedule and the random states.
    Returns the client state, as ``load_training_state`` does. A checkpoint of another engine
    or precision restores no optimizer state (a warning)."""
    release = False
    if iteration is None:
        iteration, release, _ = get_checkpoint_iteration(args.load)
    path = get_checkpoint_name(args.load, iteration, release)
    state = share_from_rank0(
        lambda: {key: value for key, value in read_checkpoint_file(path).items() if key != "module"}
    )
    then = (state.get("engine"), state.get("precision"))
    if then != ("fsdp", engine.precision):
        print_rank0(
            f"{path} was saved with (engine, precision) = {then}, this run uses ('fsdp', {engine.precision!r}): "
            "the optimizer state is not restored and starts fresh.",
            level="WARNING",
        )
    else:
        saved = _read_optimizer_file(os.path.join(os.path.dirname(path), OPTIMIZER_FILE))
        if engine.precision != "fp32":
            set_model_state_dict(engine.module, saved.get("master", {}), options=_FROM_RANK0)
        set_optimizer_state_dict(engine.module, engine.optimizer, saved.get("optimizer", {}), options=_FROM_RANK0)
    return restore_schedule_and_rng(state, path, lr_scheduler, args)


def _read_optimizer_file(path: str) -> dict:
    """The optimizer file on global rank 0; ``{}`` elsewhere. A missing or damaged file (against
    the manifest) raises on every rank, not only on rank 0 while the others wait for its data."""

    def check() -> None:
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing: the FSDP optimizer state cannot be restored")
        check_file(path)

    share_from_rank0(check)
    return load_torch_file(path) if global_rank() == 0 else {}
