"""Shared pieces of the benchmarks: interleaved timing, presets, tables."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (interleaved)")
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")


def resolve_dtype(args) -> torch.dtype:
    name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    return torch.bfloat16 if name == "bf16" else torch.float32


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: str, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, run in turn (A B A B ...) so that load on a shared
    machine affects all sides alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
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
