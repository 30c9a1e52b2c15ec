"""Training-loop helpers: timers, memory reports, argument dumps and metric writers
(tensorboard, wandb). All work on CPU-only machines."""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import NoReturn

import torch

from sat.helpers import print_rank0

SUMMARY_WRITER_DIR_NAME = "runs"


def _synchronize() -> None:
    # Timing asynchronous CUDA work needs a sync; a CPU run (or CUDA never used) has nothing to wait for.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timers:
    """Named wall-clock timers: ``timers("forward").start()`` ... ``.stop()``; ``log`` prints the
    averages. Each start and stop waits for pending CUDA work when CUDA is in use."""

    class Timer:
        def __init__(self, name: str):
            self.name = name
            self.elapsed_ = 0.0
            self.started_ = False
            self.start_time = 0.0

        def start(self) -> None:
            if self.started_:
                raise RuntimeError(f"timer {self.name!r} has already been started")
            _synchronize()
            self.start_time = time.perf_counter()
            self.started_ = True

        def stop(self) -> None:
            if not self.started_:
                raise RuntimeError(f"timer {self.name!r} is not started")
            _synchronize()
            self.elapsed_ += time.perf_counter() - self.start_time
            self.started_ = False

        def reset(self) -> None:
            self.elapsed_ = 0.0
            self.started_ = False

        def elapsed(self, reset: bool = True) -> float:
            """Seconds accumulated so far (a running timer keeps running)."""
            running = self.started_
            if running:
                self.stop()
            elapsed = self.elapsed_
            if reset:
                self.reset()
            if running:
                self.start()
            return elapsed

    def __init__(self):
        self.timers: dict[str, Timers.Timer] = {}

    def __call__(self, name: str) -> Timers.Timer:
        if name not in self.timers:
            self.timers[name] = self.Timer(name)
        return self.timers[name]

    def log(self, names: list[str], normalizer: float = 1.0, reset: bool = True) -> str:
        """Print (on rank 0) and return ``time (ms) | name: ms per normalizer | ...``."""
        if normalizer <= 0:
            raise ValueError(f"normalizer must be positive, got {normalizer}")
        parts = [
            f"{name}: {self.timers[name].elapsed(reset=reset) * 1000.0 / normalizer:.2f}"
            for name in names
            if name in self.timers
        ]
        line = " | ".join(["time (ms)", *parts])
        print_rank0(line)
        return line


def report_memory(name: str) -> str:
    """Print (on rank 0) and return the memory in use: CUDA allocator statistics on a GPU,
    the process's peak resident size otherwise."""
    mb = 1024.0 * 1024.0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        line = (
            f"{name} memory (MB) | allocated: {torch.cuda.memory_allocated() / mb:.1f} | "
            f"max allocated: {torch.cuda.max_memory_allocated() / mb:.1f} | "
            f"reserved: {torch.cuda.memory_reserved() / mb:.1f} | "
            f"max reserved: {torch.cuda.max_memory_reserved() / mb:.1f}"
        )
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak_mb = peak / mb if sys.platform == "darwin" else peak / 1024.0
        line = f"{name} memory (MB) | peak resident: {peak_mb:.1f}"
    print_rank0(line)
    return line


def print_args(args) -> None:
    """Print every argument (rank 0); with ``--save-args`` also write them next to the
    tensorboard runs (``<summary dir>/runs/<experiment>.txt``)."""
    lines = [f"  {key} {'.' * (29 - len(key))} {value}" for key, value in vars(args).items()]
    print_rank0("arguments:\n" + "\n".join(lines), level="DEBUG")
    base = summary_base_dir(args)
    if getattr(args, "save_args", False) and base is not None:
        folder = os.path.join(base, SUMMARY_WRITER_DIR_NAME)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, args.experiment_name + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def summary_base_dir(args) -> str | None:
    """Where summaries go: ``--summary-dir`` (``training_main`` defaults it to ``--save``), or
    nowhere; never the current directory unless asked."""
    return getattr(args, "summary_dir", "") or None


def get_sample_writer(name: str, base: str, iteration: int = 0):
    """A tensorboard ``SummaryWriter`` writing to ``<base>/runs/<name>``; steps after
    ``iteration`` from an earlier, interrupted run are purged."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=os.path.join(base, SUMMARY_WRITER_DIR_NAME, name), purge_step=iteration)


def init_wandb_writer(args) -> None:
    """Start a wandb run named after the experiment (``--wandb``; wandb must be installed)."""
    try:
        import wandb
    except ImportError:
        raise ImportError("--wandb needs the wandb package: pip install wandb") from None
    wandb.init(project=args.wandb_project_name, name=args.experiment_name, dir=summary_base_dir(args))


def log_scalars(summary_writer, args, scalars: dict[str, float], step: int) -> None:
    """Write ``scalars`` to tensorboard and, with ``--wandb``, to wandb (rank 0 only)."""
    if summary_writer is not None:
        for key, value in scalars.items():
            summary_writer.add_scalar(key, value, step)
    if getattr(args, "wandb", False) and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        import wandb

        wandb.log(scalars, step=step, commit=True)


def exit_process(code: int = 0) -> NoReturn:
    """End a training process: a barrier with the other ranks, flushed output, ``os._exit``.

    A normal interpreter exit after gloo collectives aborts now and then (a gloo thread frees
    tensors while Python finalises: ``terminate called without an active exception``), which
    a launcher reports as a failed run. Skipping the finalisation avoids it."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
