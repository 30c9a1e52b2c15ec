"""Running a test function on several processes over gloo (2-process CPU tests)."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sat import mpu
from sat.helpers import get_free_port
from sat.mpu.partition import merge_strided, partition_spec


def _worker(rank: int, world_size: int, port: int, outdir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
        result = {"ok": True, "value": fn(rank, world_size, *args)}
        dist.barrier()
    except BaseException:  # report everything, assertion failures included, to the parent
        result = {"ok": False, "value": traceback.format_exc()}
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a normal exit can abort in gloo's teardown (environment.md)


def run_workers(fn: Callable, world_size: int = 2, *args, timeout: float = 300) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes joined by a gloo
    process group; return each rank's value (tensors, numbers, containers of them), or raise
    with the failing ranks' tracebacks. ``fn`` must be a module-level function."""
    context = mp.get_context("spawn")
    port = get_free_port()
    with tempfile.TemporaryDirectory() as outdir:
        processes = [
            context.Process(target=_worker, args=(rank, world_size, port, outdir, fn, args))
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout)
        for process in processes:
            if process.is_alive():
                process.kill()
        results = []
        for rank in range(world_size):
            path = os.path.join(outdir, f"rank{rank}.pt")
            if not os.path.exists(path):
                raise AssertionError(f"rank {rank} reported nothing (crashed or exceeded {timeout}s)")
            results.append(torch.load(path, weights_only=True))
    failures = [f"rank {rank}:\n{r['value']}" for rank, r in enumerate(results) if not r["ok"]]
    if failures:
        raise AssertionError("\n".join(failures))
    return [r["value"] for r in results]


def gathered_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full gradient of each parameter that has one, gathered over the model-parallel group
    (in a worker of ``run_workers``)."""
    grads = {}
    world = mpu.get_model_parallel_world_size()
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        spec = partition_spec(param)
        if spec is None:
            grads[name] = param.grad
            continue
        parts = [torch.empty_like(param.grad) for _ in range(world)]
        dist.all_gather(parts, param.grad.contiguous(), group=mpu.get_model_parallel_group())
        grads[name] = merge_strided(parts, spec[1], spec[0])
    return grads


def assert_grads_equal(gathered: dict[str, torch.Tensor], model: torch.nn.Module, tolerance: float = 1e-5) -> None:
    """Every gradient of ``model`` (one process) equals the gathered one within ``tolerance``."""
    for name, param in model.named_parameters():
        assert (gathered[name] - param.grad).abs().max() < tolerance, name
