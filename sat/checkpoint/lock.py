"""One writer per checkpoint directory: ``<save>/save.lock`` holds the writing job's host, pid and
process start time.

A second job saving into the same directory is refused with an error naming the holder. A lock
left by a job that died (SIGKILL, power loss) is taken over when its holder is provably gone: on
this host, no process with that pid, or one with another start time (the pid was reused). A lock
from another host cannot be checked from here: the error says to delete it once that job is gone.
"""

from __future__ import annotations

import json
import os
import socket

from sat.checkpoint.errors import CheckpointError
from sat.helpers import print_rank0

LOCK_NAME = "save.lock"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, /proc), None when it does not
    exist; ``""`` where /proc is unavailable (then only the pid's existence is checked)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""


def _holder_alive(holder: dict) -> bool:
    started = _start_time(int(holder["pid"]))
    return started is not None and (started == "" or started == holder.get("start_time", started))


class SaveLock:
    """The lock of checkpoint directory ``directory``; ``acquire`` it before the first save and
    ``release`` it at the end (also a context manager)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.held = False

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid())}

    def acquire(self) -> None:
        """Take the lock, or raise ``CheckpointError`` naming the job that holds it."""
        os.makedirs(self.directory, exist_ok=True)
        record = self._record()
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._clear_stale_or_raise(record["host"])
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise CheckpointError(f"could not take {self.path}: another job keeps creating it")

    def _clear_stale_or_raise(self, host: str) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            holder["pid"] = int(holder["pid"])
        except FileNotFoundError:
            return  # released meanwhile
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{self.path} is not a lock this version wrote ({e}); "
                f"delete it if no job is saving into {self.directory}"
            ) from e
        if holder.get("host") != host:
            raise CheckpointError(
                f"{self.directory} is being written by another job (pid {holder['pid']} on host {holder.get('host')}, "
                f"see {self.path}). Save somewhere else, or delete {self.path} once that job has ended."
            )
        if _holder_alive(holder):
            raise CheckpointError(
                f"{self.directory} is being written by another job (pid {holder['pid']} on this host, see "
                f"{self.path}). Two jobs saving into one directory would overwrite each other's checkpoints: "
                "save somewhere else (--save) or wait for that job to end."
            )
        print_rank0(f"{self.path}: taking over the lock of pid {holder['pid']}, which has ended", level="WARNING")
        os.remove(self.path)

    def release(self) -> None:
        """Remove the lock file if this object holds it (idempotent)."""
        if self.held:
            self.held = False
            if os.path.isfile(self.path):
                os.remove(self.path)

    def __enter__(self) -> SaveLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
