"""The manifest of a checkpoint's iteration directory: every file in it with its size and SHA-256.

::

    <save>/<iteration>/manifest.json   {"format": 1, "algorithm": "sha256",
                                        "files": {"mp_rank_00_model_states.pt": {"size": N, "sha256": "..."}}}

It is written last, once every rank's files are durable, and it lists every file of the
directory whatever wrote it (sat, DeepSpeed, another checkpoint format), so a later reader can
tell a complete checkpoint from a truncated, corrupted or half-copied one. Sizes are cheap and
checked on every read (``check_file``); checksums read every byte and are checked on request
(``verify_directory(..., checksums=True)``, ``python -m sat.tools.verify_checkpoint``) and when
training resumes. Checkpoints without a manifest (the original library's) are accepted unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch.distributed as dist

from sat.checkpoint.atomic import atomic_write_text, fsync_directory
from sat.checkpoint.errors import CheckpointError

MANIFEST = "manifest.json"
ALGORITHM = "sha256"
_FORMAT = 1
_CHUNK = 8 << 20  # bytes per read while hashing


def list_files(directory: str) -> list[str]:
    """Every file under ``directory`` (recursively) except the manifest, as sorted relative
    POSIX paths."""
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def digest_file(path: str, sync: bool = False) -> dict:
    """``{"size": bytes, "sha256": hex}`` of ``path``; with ``sync`` the file is also fsynced
    (a file written by code that does not fsync becomes durable here)."""
    hasher = hashlib.new(ALGORITHM)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"size": size, ALGORITHM: hasher.hexdigest()}


def digest_files(directory: str, names: list[str], sync: bool = False, distributed: bool = False) -> dict[str, dict]:
    """``digest_file`` of each of ``names`` in ``directory``. With ``distributed`` (every rank
    calls it with the same ``names``), each rank hashes a share and all get every digest."""
    world = dist.get_world_size() if distributed and dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    own = {name: digest_file(os.path.join(directory, name), sync) for name in names[rank::world]}
    if world == 1:
        return own
    shares: list = [None] * world
    dist.all_gather_object(shares, own)
    return {name: share[name] for share in shares for name in share}


def write_manifest(directory: str, digests: dict[str, dict]) -> None:
    """Write ``<directory>/manifest.json`` atomically and fsync the directory."""
    text = json.dumps({"format": _FORMAT, "algorithm": ALGORITHM, "files": digests}, indent=1, sort_keys=True)
    atomic_write_text(os.path.join(directory, MANIFEST), text)
    fsync_directory(directory)


def read_manifest(directory: str) -> dict[str, dict] | None:
    """The ``files`` table of ``<directory>/manifest.json``; None when there is none (a checkpoint
    of the original library, or of sat before manifests). An unreadable manifest is returned as
    a table with one problem, reported by ``verify_directory``."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("algorithm") != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f"algorithm {manifest.get('algorithm')!r}, files of type {type(files).__name__}")
    except (ValueError, KeyError, TypeError) as e:
        return {MANIFEST: {"problem": f"{path} is not a valid manifest ({e})"}}
    return files


def _size_problem(directory: str, name: str, entry: dict) -> str | None:
    if "problem" in entry:
        return entry["problem"]
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return f"{path} is missing (the manifest lists it, {entry['size']} bytes)"
    size = os.path.getsize(path)
    if size != entry["size"]:
        return f"{path} has {size} bytes, the manifest says {entry['size']} (truncated or overwritten)"
    return None


def check_file(path: str) -> None:
    """Raise ``CheckpointError`` when ``path``'s directory has a manifest that does not list it
    with this size; nothing to check without a manifest."""
    directory, name = os.path.split(path)
    files = read_manifest(directory)
    if files is None:
        return
    entry = files.get(MANIFEST) or files.get(name)
    if entry is None:
        raise CheckpointError(f"{path} is not in {os.path.join(directory, MANIFEST)}: not part of the saved checkpoint")
    problem = _size_problem(directory, name, entry)
    if problem is not None:
        raise CheckpointError(f"checkpoint {directory} is damaged: {problem}")


def verify_directory(directory: str, checksums: bool = False, distributed: bool = False) -> list[str] | None:
    """The problems of the iteration directory ``directory`` against its manifest (missing files,
    wrong sizes and, with ``checksums``, wrong contents), each naming the file; ``[]`` when it is
    intact, None when it has no manifest. ``distributed``: see ``digest_files``."""
    if not os.path.isdir(directory):
        return [f"{directory} does not exist"]
    files = read_manifest(directory)
    if files is None:
        return None
    problems = [p for name, entry in files.items() if (p := _size_problem(directory, name, entry)) is not None]
    if problems or not checksums:
        return problems
    names = sorted(files)
    actual = digest_files(directory, names, distributed=distributed)
    return [
        f"{os.path.join(directory, name)} does not match its {ALGORITHM} in the manifest (corrupted)"
        for name in names
        if actual[name][ALGORITHM] != files[name][ALGORITHM]
    ]


def iteration_directories(checkpoints_path: str) -> list[int]:
    """The iterations with a directory ``<checkpoints_path>/<n>``, newest first."""
    if not os.path.isdir(checkpoints_path):
        return []
    names = os.listdir(checkpoints_path)
    return sorted(
        (int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(checkpoints_path, n))), reverse=True
    )


def seal_directory(directory: str) -> None:
    """The last step of writing an iteration directory, on every rank once all have written
    their files: each rank fsyncs and hashes a share of the files, then rank 0 writes the
    manifest and fsyncs the directory."""
    distributed = dist.is_available() and dist.is_initialized()
    names = [list_files(directory)]
    if distributed:
        dist.broadcast_object_list(names, src=0)  # one listing, whatever each rank's file system shows
    digests = digest_files(directory, names[0], sync=True, distributed=distributed)
    if not distributed or dist.get_rank() == 0:
        write_manifest(directory, digests)
