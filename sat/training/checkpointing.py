"""Training checkpoints: ``save_checkpoint`` for a DeepSpeed engine or a plain module, and
``load_training_state`` to continue a run.

A checkpoint saved from a DeepSpeed engine (``training_main``) keeps the original layout
(``sat.checkpoint``) and also carries what a run needs to continue exactly: the optimizer state
(with ZeRO, DeepSpeed's per-rank shards next to the model file), the learning-rate schedule, the
iteration, the data position and the random states of every rank (``rng_states_rank_XXXXX.pt``;
rank 0's are also in the model file, as the original library wrote them, together with the
model-parallel tracker's ``rng_tracker_states``). It is assembled in ``<iteration>.partial/``;
once every rank has written its part (a write failing on any rank fails the save on every rank,
``latest`` untouched), the files are fsynced and listed with their checksums in
``manifest.json`` (``sat.checkpoint.manifest``), the directory is renamed to ``<iteration>/``,
and ``latest`` moves last. ``--save-keep N`` then deletes all but the newest N checkpoints
(``sat.checkpoint.recovery``), never the one the run resumed from.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist

from sat import mpu
from sat.checkpoint import (
    CheckpointError,
    checkpoint_format_of,
    entry_file,
    get_checkpoint_iteration,
    get_checkpoint_name,
    load_torch_file,
    model_states_stem,
    publish_checkpoint,
    read_checkpoint_file,
    read_latest,
    rng_states,
    rng_states_path,
    save_checkpoint_file,
    save_dir_of,
    save_module_checkpoint,
    saved_model_parallel_size,
    shard_path_of_safetensors,
)
from sat.checkpoint.atomic import fsync_directory
from sat.checkpoint.lock import SaveLock
from sat.checkpoint.manifest import check_file, seal_directory
from sat.checkpoint.partitioned import gathered_state_dict
from sat.checkpoint.recovery import rotate_checkpoints
from sat.helpers import print_rank0
from sat.runtime import barrier, from_rank0, global_rank
from sat.training.ema import ema_checkpoint_tag, ema_optimizer_of, save_ema_weights


def save_checkpoint(
    iteration: int, model: torch.nn.Module, optimizer, lr_scheduler, args, client_state: dict | None = None
) -> None:
    """Save ``model`` as ``<args.save>/<iteration>`` and point ``latest`` at it.

    For a plain module: its weights, one file per model-parallel rank (written by the first
    data-parallel copy). For a DeepSpeed engine: the full training state (see the module
    docstring), with ``client_state`` (e.g. the data position) added to the model file. Every
    rank must call it. ``optimizer``: what ``deepspeed.initialize`` returned, or for a plain module
    the torch optimizer, or None (an engine saves its own optimizer's state). When the optimizer is
    ``sat.ops.FusedEmaAdam`` (the engine's, under ZeRO stage 0-2), the EMA weights are also saved,
    as ``<args.save>/<iteration>-ema`` (load them with ``from_pretrained(args.save,
    specific_iteration="<iteration>-ema")``).
    """
    if is_deepspeed_engine(model):
        _save_engine_checkpoint(iteration, model, lr_scheduler, args, client_state or {})
    elif is_fsdp_engine(model):
        model.save_training_checkpoint(iteration, lr_scheduler, args, client_state or {})
    else:
        if ema_optimizer_of(optimizer) is not None:
            ema_dir = os.path.join(save_dir_of(args), ema_checkpoint_tag(iteration))
            save_ema_weights(ema_dir, model, optimizer, {"iteration": iteration}, *checkpoint_format_of(args))
        save_module_checkpoint(iteration, model, args)
    keep = getattr(args, "save_keep", None)
    if keep and global_rank() == 0:
        rotate_checkpoints(save_dir_of(args), keep, {getattr(args, "resumed_from", None)} - {None})
    barrier()


_LOCKS: dict[str, SaveLock] = {}  # the save directories this process holds


def lock_save_directory(save_dir: str) -> None:
    """Refuse a second job saving into ``save_dir``: rank 0 takes ``<save_dir>/save.lock``
    (``sat.checkpoint.lock``; a lock left by a dead job on this host is taken over) and every
    rank raises its ``CheckpointError`` when it cannot. Released by ``release_save_directory``
    or at exit. Every rank must call it."""
    error = None
    if global_rank() == 0 and save_dir not in _LOCKS:
        lock = SaveLock(save_dir)
        try:
            lock.acquire()
            _LOCKS[save_dir] = lock
        except CheckpointError as e:
            error = str(e)
    error = from_rank0(error)
    if error is not None:
        raise CheckpointError(error)


def release_save_directory() -> None:
    """Release every save directory this process locked."""
    while _LOCKS:
        _LOCKS.popitem()[1].release()


atexit.register(release_save_directory)


def is_deepspeed_engine(model) -> bool:
    """Whether ``model`` is a DeepSpeed engine (what ``deepspeed.initialize`` returns)."""
    ds = sys.modules.get("deepspeed")
    return ds is not None and isinstance(model, ds.DeepSpeedEngine)


def is_fsdp_engine(model) -> bool:
    """Whether ``model`` is ``training_main``'s FSDP engine (``sat.training.fsdp_engine``)."""
    fsdp = sys.modules.get("sat.training.fsdp_engine")
    return fsdp is not None and isinstance(model, fsdp.FSDPEngine)


def _precision(engine) -> str:
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def _full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's complete state dict on CPU on data-parallel rank 0, which writes it (empty
    elsewhere), gathered from the ZeRO-3 partitions one submodule at a time (a collective): no
    rank holds the whole model on the accelerator, and only that rank a copy on the host."""
    return gathered_state_dict(engine.module, keep=mpu.get_data_parallel_rank() == 0)


def save_training_checkpoint(
    iteration: int,
    module: torch.nn.Module,
    lr_scheduler,
    args,
    state: dict,
    write: Callable[[str, dict, list[str]], list[tuple[str, str]]],
) -> None:
    """The steps of every training save (DeepSpeed's engine and FSDP's; see the module
    docstring): an iteration that already is the latest is not saved again; otherwise
    ``<iteration>.partial/`` is made afresh and ``write(tag, state, failures)`` writes the
    engine's files into it (tag ``<iteration>.partial``; ``state``: the engine's entries plus the
    iteration, schedule, data-parallel size and random states; failed writes appended to
    ``failures``) and returns other ``(partial directory, final directory)`` pairs it wrote, moved
    into place with it. Then every rank's random states, the check that no rank failed, the
    manifest, and on rank 0 the renames, ``model_config.json`` and ``latest``. Every rank calls it."""
    save_dir = save_dir_of(args)
    final = os.path.join(save_dir, str(iteration))
    if from_rank0(os.path.isdir(final) and read_latest(save_dir) == str(iteration)):
        print_rank0(f"{final} is already the latest checkpoint; not saving iteration {iteration} again")
        return
    tag = f"{iteration}.partial"
    partial = os.path.join(save_dir, tag)
    if global_rank() == 0:
        if os.path.isdir(partial):  # left by a save that crashed
            shutil.rmtree(partial)
        os.makedirs(partial)
    barrier()
    state = {
        "iteration": iteration,
        "client_lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "dp_world_size": mpu.get_data_parallel_world_size(),
        **state,
    }
    rng = None if getattr(args, "no_save_rng", False) else rng_states()
    if rng is not None:
        state.update(rng)
    print_rank0(f"saving checkpoint {final}")
    failures: list[str] = []
    moves = write(tag, state, failures)
    if rng is not None:
        _recorded_save(failures, rng, rng_states_path(partial, global_rank()), checkpoint_format_of(args))
    _raise_if_any_rank_failed(failures, final)
    barrier()
    seal_directory(partial)
    barrier()
    if global_rank() == 0:
        for source, target in [*moves, (partial, final)]:
            _replace_dir(source, target)
        fsync_directory(save_dir)
        publish_checkpoint(iteration, module, args, save_dir)
    barrier()


def _save_engine_checkpoint(iteration: int, engine, lr_scheduler, args, client_state: dict) -> None:
    save_dir = save_dir_of(args)
    safe_engine = use_safe_checkpoint_engine(engine)
    safe_engine.checkpoint_format = checkpoint_format_of(args)

    def write(tag: str, state: dict, failures: list[str]) -> list[tuple[str, str]]:
        safe_engine.failures = failures  # DeepSpeed's writes fail into the list, not between its collectives
        try:
            engine.save_checkpoint(save_dir, tag=tag, client_state=state, save_latest=False)
        finally:
            safe_engine.failures = None
        if engine.zero_optimization_partition_weights():
            # ZeRO-3 writes only partitions; the original layout needs the whole module per MP rank.
            module_state = _full_state_dict(engine)
            if mpu.get_data_parallel_rank() == 0:
                path = get_checkpoint_name(save_dir, tag)
                _recorded_save(failures, {"module": module_state, **state}, path, safe_engine.checkpoint_format)
        ema_tag = _save_engine_ema(iteration, engine, save_dir, safe_engine.checkpoint_format)
        if ema_tag is None:
            return []
        return [(os.path.join(save_dir, ema_tag), os.path.join(save_dir, ema_checkpoint_tag(iteration)))]

    engine_state = {"zero_stage": engine.zero_optimization_stage(), "precision": _precision(engine), **client_state}
    save_training_checkpoint(iteration, engine.module, lr_scheduler, args, engine_state, write)


def _recorded_save(failures: list[str], obj, path: str, checkpoint_format: tuple[str, int | str]) -> None:
    """``save_checkpoint_file`` (a model file in ``checkpoint_format``: ``(format, max shard
    size)``), appending a failure (a full disk, a read-only directory) to ``failures`` instead of
    raising, so that every rank reaches the check of all ranks."""
    try:
        save_checkpoint_file(obj, path, *checkpoint_format)
    except (OSError, RuntimeError) as e:
        failures.append(f"{path}: {e}")


def _raise_if_any_rank_failed(failures: list[str], final: str) -> None:
    """Raise ``CheckpointError`` on every rank when a write failed on any rank (a collective)."""
    everyone = [failures]
    if dist.is_available() and dist.is_initialized():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, failures)
    problems = [f"rank {rank}: {failure}" for rank, own in enumerate(everyone) for failure in own]
    if problems:
        raise CheckpointError(
            f"checkpoint {final} was not saved ('latest' still names the previous one): {'; '.join(problems)}. "
            "Free disk space or fix the permissions of the save directory, then resume with --load."
        )


def _replace_dir(source: str, target: str) -> None:
    if os.path.isdir(target):  # left by a run that crashed before pointing ``latest`` at it
        shutil.rmtree(target)
    os.replace(source, target)


def _save_engine_ema(iteration: int, engine, save_dir: str, checkpoint_format: tuple[str, int | str]) -> str | None:
    """Write the EMA weights of a ``FusedEmaAdam`` engine as ``<iteration>-ema.partial``; returns
    that tag, or None when the optimizer keeps no EMA (or, under ZeRO-3, cannot swap it in)."""
    if ema_optimizer_of(engine.optimizer) is None:
        return None
    if engine.zero_optimization_partition_weights():
        print_rank0("FusedEmaAdam under ZeRO-3: the EMA weights are not saved (ZeRO stages 0-2 save them)", "WARNING")
        return None
    tag = f"{ema_checkpoint_tag(iteration)}.partial"
    if global_rank() == 0 and os.path.isdir(os.path.join(save_dir, tag)):
        shutil.rmtree(os.path.join(save_dir, tag))
    barrier()
    print_rank0(f"saving the EMA weights as {os.path.join(save_dir, ema_checkpoint_tag(iteration))}")
    state = {"iteration": iteration}
    save_ema_weights(os.path.join(save_dir, tag), engine.module, engine.optimizer, state, *checkpoint_format)
    return tag


class _SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine with atomic writes and ``weights_only`` reads; the model file
    (``mp_rank_XX_model_states.pt``) is written in ``checkpoint_format`` and read in either."""

    def __init__(self, inner):
        self._inner = inner
        self.failures: list[str] | None = None  # set during a save: failed writes are recorded there
        self.checkpoint_format: tuple[str, int | str] = checkpoint_format_of(None)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def save(self, state_dict, path: str) -> None:
        if self.failures is None:
            save_checkpoint_file(state_dict, path, *self.checkpoint_format)
        else:
            _recorded_save(self.failures, state_dict, path, self.checkpoint_format)

    def load(self, path: str, map_location=None):
        rank_file = shard_path_of_safetensors(path)
        if rank_file is not None:  # saved as safetensors (see _model_files_of_either_format)
            return read_checkpoint_file(rank_file)
        check_file(path)
        return load_torch_file(path, map_location=map_location, extra_globals=_deepspeed_safe_globals())


def _deepspeed_safe_globals() -> list:
    # The few plain-data classes DeepSpeed pickles into its optimizer files.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def use_safe_checkpoint_engine(engine) -> _SafeCheckpointEngine:
    """Make ``engine`` write its checkpoint files atomically and read them with
    ``weights_only=True`` (idempotent); returns the wrapper."""
    if not isinstance(engine.checkpoint_engine, _SafeCheckpointEngine):
        engine.checkpoint_engine = _SafeCheckpointEngine(engine.checkpoint_engine)
        engine._get_all_ckpt_names = _model_files_of_either_format(engine._get_all_ckpt_names)
    return engine.checkpoint_engine


def _model_files_of_either_format(find_pt_files):
    """DeepSpeed finds the model files to load by globbing ``mp_rank_*_model_states.pt``; for a
    checkpoint saved as safetensors, give it each rank's index (or single file), which the safe
    engine's ``load`` reads as the whole checkpoint of that rank."""

    def find(checkpoints_path: str, tag) -> list[str]:
        found = find_pt_files(checkpoints_path, tag)
        iteration_dir = os.path.join(checkpoints_path, str(tag))
        if found or not os.path.isdir(iteration_dir):
            return found
        ranks = range(saved_model_parallel_size(iteration_dir))
        return [entry_file(iteration_dir, model_states_stem(rank)) for rank in ranks]

    return find


def load_training_state(engine, lr_scheduler, args, load_path: str | None = None, iteration: int | None = None) -> dict:
    """Continue a run from the checkpoint in ``load_path`` (default ``args.load``), after
    ``deepspeed.initialize``: restore the optimizer (with its ZeRO shards) and the learning-rate
    schedule. Returns the checkpoint's client state: ``iteration``, ``data_position`` and, unless
    ``--no-load-rng``, this rank's random states under ``"rng"`` (apply them with
    ``restore_rng_states`` right before the next step). Weights-only checkpoints, and ones saved
    with another ZeRO stage, precision or data-parallel size, restore the weights only (with
    a warning); the optimizer then starts fresh. ``iteration``: that checkpoint instead of
    ``latest``'s (the one ``choose_resume_iteration`` picked).
    """
    load_path = load_path or args.load
    release = False
    if iteration is None:
        iteration, release, _ = get_checkpoint_iteration(load_path)
    path = get_checkpoint_name(load_path, iteration, release)
    state = dict(read_checkpoint_file(path))
    now = (engine.zero_optimization_stage(), mpu.get_data_parallel_world_size(), _precision(engine))
    then = (state.get("zero_stage"), state.get("dp_world_size"), state.get("precision"))
    if None in then:
        print_rank0(f"{path} holds no optimizer state (weights only): the optimizer starts fresh.", "WARNING")
    elif then != now:
        print_rank0(
            f"{path} was saved with (ZeRO stage, data-parallel size, precision) = {then}, this run uses {now}: "
            "the optimizer state is not restored and starts fresh.",
            level="WARNING",
        )
    else:
        use_safe_checkpoint_engine(engine)
        loaded, _ = engine.load_checkpoint(
            load_path, tag=str(iteration), load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load the training state of {path}")
    return restore_schedule_and_rng(state, path, lr_scheduler, args)


def restore_schedule_and_rng(state: dict, path: str, lr_scheduler, args) -> dict:
    """The part of resuming every engine shares: the learning-rate schedule from the client
    ``state`` of the model file ``path``, and (unless ``--no-load-rng``) this rank's random
    states under ``state["rng"]``. Returns ``state``."""
    if lr_scheduler is not None and state.get("client_lr_scheduler"):
        lr_scheduler.load_state_dict(state["client_lr_scheduler"])
    if not getattr(args, "no_load_rng", False):
        own = rng_states_path(os.path.dirname(path), global_rank())
        if os.path.isfile(own):
            state["rng"] = load_torch_file(own)
        elif "torch_rng_state" in state:
            print_rank0(f"{own} is missing: every rank continues from rank 0's random states.", "WARNING")
            state["rng"] = {key: state[key] for key in rng_states() if key in state}
    return state
