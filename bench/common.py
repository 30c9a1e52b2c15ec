"""Shared pieces of the benchmarks: interleaved timing, presets, tables."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import platform
import statistics
import time
from collections.abc import Callable

import torch


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--repeats", type=int, default=6, help="timed runs of each side (interleaved, even is fair)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed runs of each side first (with --system-malloc off, the heap stops growing after a few)",
    )
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep glibc's default of handing large blocks back to the OS (see steady_malloc)",
    )


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def steady_malloc(args) -> str:
    """Make glibc keep freed memory for reuse; returns a line for the table's footer.

    By default glibc maps every block above 32 MiB (logits, embedding gradients, optimizer
    temporaries) fresh from the OS and unmaps it when freed, so each step pays a page fault per
    4 KiB again: about 340k faults per LLaMA-medium training step here, whose cost varies with
    the allocator's state and made repeated runs differ by several percent. Both sides share
    the process, so the setting applies to both alike (PyTorch's CPU tuning guide recommends
    jemalloc or tcmalloc for the same reason).
    """
    if args.system_malloc or args.device != "cpu" or platform.libc_ver()[0] != "glibc":
        return "system malloc"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        return "system malloc (mallopt refused)"
    return "glibc malloc keeping freed memory (no mmap, no trimming; --system-malloc to turn off)"


def resolve_dtype(args) -> torch.dtype:
    name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    return torch.bfloat16 if name == "bf16" else torch.float32


def describe_setting(args, dtype: torch.dtype, allocator: str) -> str:
    """The footer's account of where the numbers come from."""
    return f"{args.device}, {str(dtype).replace('torch.', '')}, torch {torch.__version__}, {allocator}"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: str, warmup: int) -> dict[str, float]:
    """Median seconds of each callable over ``repeats`` timed runs after ``warmup`` untimed ones,
    run in turn so that load on a shared machine affects all sides alike. The order alternates
    (A B, B A, A B...): on a CPU the side that runs first in a pair was measured up to 20%
    slower, whichever it was (allocator state)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(warmup + repeats):
        for name, fn in list(runs.items())[:: 1 if repeat % 2 == 0 else -1]:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if repeat >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(table: str, output: str | None) -> None:
    print(table)
    if output:
        with open(output, "w") as f:
            f.write(table + "\n")


def sat_gpt2_args(p: dict, max_length: int | None = None):
    """The arguments of sat's ``GPT2Model`` for a preset ``p`` (``layers``, ``hidden``, ``heads``,
    ``vocab``, ``seq``), without dropout: the sides of a benchmark compute the same thing."""
    from sat.model import GPT2Model

    return GPT2Model.get_args(
        num_layers=p["layers"],
        hidden_size=p["hidden"],
        num_attention_heads=p["heads"],
        vocab_size=p["vocab"],
        max_sequence_length=max_length or p["seq"],
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
