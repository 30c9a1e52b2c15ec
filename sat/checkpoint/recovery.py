"""Choosing the checkpoint to resume from (the newest intact one) and rotating old ones
(``--save-keep``).

Resuming verifies every file of ``latest``'s iteration against its manifest, checksums
included. A damaged or incomplete one is skipped with a warning naming each problem, and the
next older intact one is used; when the run writes into the same directory, the damaged one is
renamed ``<iteration>.corrupt`` and ``latest`` rewritten, so the directory again says what the
run continues from (and a later save of that iteration is not mistaken for done).
"""

from __future__ import annotations

import os
import shutil

from sat.checkpoint.atomic import atomic_write_text, fsync_directory
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import (
    get_checkpoint_iteration,
    get_checkpoint_tracker_filename,
    model_states_stem,
    read_latest,
    shard_path,
)
from sat.checkpoint.manifest import iteration_directories, verify_directory
from sat.checkpoint.safetensors_files import has_safetensors
from sat.helpers import print_rank0
from sat.runtime import from_rank0, global_rank


def _candidates(load_path: str) -> list[int]:
    """``latest``'s iteration and the older iteration directories, newest first (every
    iteration directory when ``latest`` is missing or unreadable)."""
    directories = iteration_directories(load_path)
    try:
        latest, _, _ = get_checkpoint_iteration(load_path)
    except CheckpointError as e:
        if not directories:
            raise
        print_rank0(f"{e}; looking for the newest intact iteration directory instead", level="WARNING")
        return directories
    return [latest, *(n for n in directories if n < latest)]


def _problems(load_path: str, iteration: int) -> list[str]:
    """What is wrong with ``<load_path>/<iteration>``, checksums included (every rank hashes a
    share); a directory without a manifest (the original's) needs only its first model file."""
    directory = os.path.join(load_path, str(iteration))
    problems = verify_directory(directory, checksums=True, distributed=True)
    if problems is None:
        model_file = shard_path(directory, 0)
        present = os.path.isfile(model_file) or has_safetensors(directory, model_states_stem(0))
        problems = [] if present else [f"{model_file} (or its safetensors) is missing, and there is no manifest"]
    return from_rank0(problems)


def choose_resume_iteration(load_path: str, writable: bool) -> int | None:
    """The iteration to resume from in ``load_path``: ``latest``'s when intact, else the newest
    older intact one (with a warning naming what was wrong). None when ``latest`` says
    ``release`` (loaded as it is). ``writable``: this run saves into ``load_path``, so damaged
    checkpoints are set aside and ``latest`` rewritten. Every rank must call it. Raises
    ``CheckpointError`` listing every problem when no checkpoint is intact."""
    if from_rank0(read_latest(load_path)) == "release":
        return None
    skipped: list[tuple[int, list[str]]] = []
    for iteration in from_rank0(_candidates(load_path)):
        problems = _problems(load_path, iteration)
        if not problems:
            break
        skipped.append((iteration, problems))
        print_rank0(
            f"checkpoint {iteration} in {load_path} cannot be resumed from: {'; '.join(problems)}", level="WARNING"
        )
    else:
        found = "; ".join(f"{n}: {'; '.join(p)}" for n, p in skipped) or "no iteration directories"
        raise CheckpointError(f"no intact checkpoint to resume from in {load_path} ({found})")
    if skipped:
        print_rank0(f"resuming from checkpoint {iteration}, the newest intact one in {load_path}", level="WARNING")
        if writable and global_rank() == 0:
            _set_aside(load_path, [n for n, _ in skipped], iteration)
    return iteration


def _set_aside(load_path: str, damaged: list[int], resumed: int) -> None:
    for iteration in damaged:
        directory = os.path.join(load_path, str(iteration))
        if os.path.isdir(directory):
            target, n = f"{directory}.corrupt", 1
            while os.path.exists(target):
                target, n = f"{directory}.corrupt.{n}", n + 1
            os.replace(directory, target)
            print_rank0(f"moved the damaged checkpoint {directory} to {target}", level="WARNING")
    atomic_write_text(get_checkpoint_tracker_filename(load_path), str(resumed))


def rotate_checkpoints(save_dir: str, keep: int, protect: set[str] = frozenset()) -> list[int]:
    """Delete all but the newest ``keep`` iteration directories of ``save_dir`` (with their
    ``<iteration>-ema`` weights), never ``latest``'s nor a directory whose real path is in
    ``protect`` (the one the run resumed from). Returns the iterations deleted."""
    latest = read_latest(save_dir)
    deleted = []
    for iteration in iteration_directories(save_dir)[keep:]:
        directory = os.path.join(save_dir, str(iteration))
        if str(iteration) == latest or os.path.realpath(directory) in protect:
            continue
        # Out of the iteration namespace first (atomic), so a crash mid-delete leaves no
        # half-deleted directory that looks like a checkpoint.
        doomed = f"{directory}.deleting"
        if os.path.isdir(doomed):  # left by a crash mid-delete
            shutil.rmtree(doomed)
        os.replace(directory, doomed)
        shutil.rmtree(doomed)
        ema = os.path.join(save_dir, f"{iteration}-ema")
        if os.path.isdir(ema):
            shutil.rmtree(ema)
        deleted.append(iteration)
    if deleted:
        fsync_directory(save_dir)
        print_rank0(f"--save-keep {keep}: deleted checkpoints {sorted(deleted)} of {save_dir}")
    return deleted
