"""``training_main`` on its two engines, 2 processes over gloo: DeepSpeed ZeRO-2 (the default
engine at the stage most runs use) against ``--engine fsdp`` (FSDP2, ``fully_shard`` per layer),
on the same GPT-2, batches and optimizer. ``bench/training.py --engines`` runs it.

Each rank times its iterations after the warm-up ones as ``bench/training.py`` does (forward
step start to forward step start) and reports its peak resident memory (``ru_maxrss``) and
how far that peak rose above its resident memory right before ``training_main`` (imports and
the process group already counted there, so the rise is the model, gradients, optimizer state
and activations; no checkpoint is written). Runs alternate between the engines; the table gives
medians over repeats, and each rank's memory (under ``--engine fsdp`` rank 0 builds the whole
model; rank 1 never holds more than its shards and one layer).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp
from common import emit, markdown_table

from sat.helpers import get_free_port

ENGINES = {"DeepSpeed ZeRO-2": ["--zero-stage", "2"], "FSDP2 (--engine fsdp)": ["--engine", "fsdp"]}
WORLD_SIZE = 2


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(rank: int, port: int, flags: list[str], p: dict, iters: int, warmup: int, results) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    from training import RandomTokens, lm_loss, per_iteration, sat_args

    from sat import training_main
    from sat.model import GPT2Model

    torch.set_num_threads(1)
    starts: list[float] = []

    def forward_step(data_iterator, model, args, timers):
        starts.append(time.perf_counter())
        return lm_loss(model, next(data_iterator))

    with tempfile.TemporaryDirectory() as save:  # sat_args names one; "--save ''" then switches saving off
        args = sat_args(p, iters, save, extra=[*flags, "--save", ""])  # no checkpoint: training memory only
        before = _resident_mb()
        training_main(args, GPT2Model, forward_step, lambda path, args: RandomTokens(4096, p["seq"], p["vocab"]))
        starts.append(time.perf_counter())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        results.put((rank, per_iteration(starts, warmup), peak, peak - before))
    sys.stdout.flush()
    os._exit(0)  # a normal exit can abort in gloo's teardown (environment.md)


def run_engine(flags: list[str], p: dict, iters: int, warmup: int) -> tuple[float, ...]:
    """One 2-process run: ``(seconds per iteration (the slower rank), rank 0's peak RSS MB,
    rank 1's, rank 0's peak rise MB, rank 1's)``."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = get_free_port()
    processes = [
        context.Process(target=_worker, args=(rank, port, flags, p, iters, warmup, results))
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    reports = []
    while not results.empty():
        reports.append(results.get())
    if len(reports) != WORLD_SIZE:
        raise RuntimeError(f"an engine run with {flags} failed: {len(reports)} of {WORLD_SIZE} ranks reported")
    by_rank = sorted(reports)  # (rank, seconds, peak, rise)
    return (max(r[1] for r in by_rank), *(r[2] for r in by_rank), *(r[3] for r in by_rank))


def compare_engines(p: dict, options) -> None:
    """Print (and with ``--output`` write) the engine table for preset ``p``."""
    measured: dict[str, list[tuple[float, ...]]] = {name: [] for name in ENGINES}
    names = list(ENGINES)
    for repeat in range(options.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            measured[name].append(run_engine(ENGINES[name], p, options.iters, options.warmup))
            seconds, *memory = measured[name][-1]
            print(f"repeat {repeat + 1}/{options.repeats} {name}: {seconds * 1000:.1f} ms/iteration, "
                  f"peak RSS rank 0/1 {memory[0]:.0f}/{memory[1]:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for name, runs in measured.items():
        seconds, peak0, peak1, rise0, rise1 = (statistics.median(run[i] for run in runs) for i in range(5))
        rows.append([name, f"{seconds * 1000:.1f}", f"{peak0:.0f} / {peak1:.0f}", f"{rise0:.0f} / {rise1:.0f}"])
    print(
        f"GPT-2 preset {options.preset}, {WORLD_SIZE} processes (gloo), batch {p['batch']} x {p['seq']} tokens per "
        f"rank, fp32, 1 thread per rank, {os.cpu_count()} cores; median of {options.repeats} runs x "
        f"{options.iters - options.warmup} timed iterations (the slower rank's)"
    )
    headers = ["engine", "ms/iteration", "peak RSS rank 0 / rank 1 (MB)", "rise during training_main (MB)"]
    emit(markdown_table(headers, rows), options.output)
