"""Host memory of loading one checkpoint on 2 processes (gloo): every rank reading it (plain
``from_pretrained``), only rank 0 reading it (``from_rank0=True``), and ZeRO-3 (built inside
``deepspeed.zero.Init``, the checkpoint loaded into the partitions one submodule at a time).

Each rank reports its resident set before loading (the baseline: Python, torch, the process
group), its peak during the load (``VmHWM``, reset first), and after it the resident set and the
proportional set (``Pss``: pages shared between the ranks, such as the page cache of a
memory-mapped checkpoint file, counted once over all ranks, not once per rank). Every weight is
read once after loading (a memory-mapped one becomes resident only then). ``zero3-build`` only
builds the model inside ``deepspeed.zero.Init``, without loading. The checkpoint
is a BaseModel of ``--layers`` x ``--hidden`` with a ``--vocab`` vocabulary, fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.multiprocessing as mp
from common import emit, markdown_table

MIB = 2**20
MODES = ("plain", "rank0", "zero3-build", "zero3")


def _model_args(options):
    from sat.model import BaseModel

    return BaseModel.get_args(
        num_layers=options.layers,
        hidden_size=options.hidden,
        num_attention_heads=options.hidden // 64,
        vocab_size=options.vocab,
        max_sequence_length=512,
    )


def _proc_bytes(path: str, field: str) -> int:
    with open(path) as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> int:
    """The resident set now, after resetting its recorded peak (Linux ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_bytes("/proc/self/status", "VmRSS")


def _load(mode: str, checkpoint: str, options) -> torch.nn.Module:
    from sat.model import BaseModel

    if mode == "plain":
        return BaseModel.from_pretrained(checkpoint)[0]
    if mode == "rank0":
        return BaseModel.from_pretrained(checkpoint, from_rank0=True)[0]
    from sat.model.build import get_model

    args = _model_args(options)
    args.deepspeed_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    if mode == "zero3-build":
        return get_model(args, BaseModel)
    return BaseModel.from_pretrained(checkpoint, args)[0]


def _touch(model: torch.nn.Module) -> None:
    """Read every weight once, as a first forward pass would: a memory-mapped checkpoint's pages
    become resident only when read."""
    with torch.no_grad():
        for param in model.parameters():
            (param.ds_tensor if hasattr(param, "ds_tensor") else param).sum()


def _worker(rank: int, port: int, mode: str, checkpoint: str, options, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    import sat.model  # noqa: F401  (imported before the baseline, as any script has it)

    if mode.startswith("zero3"):
        from sat.training.deepspeed_training import import_deepspeed

        import_deepspeed().init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)

    torch.distributed.barrier()
    baseline = _reset_peak()
    model = _load(mode, checkpoint, options)
    _touch(model)
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    held = sum(p.ds_tensor.nbytes if hasattr(p, "ds_tensor") else p.nbytes for p in model.parameters())
    queue.put(
        {
            "mode": mode, "rank": rank, "baseline": baseline, "peak": peak, "held": held,
            "rss": _proc_bytes("/proc/self/status", "VmRSS"), "pss": _proc_bytes("/proc/self/smaps_rollup", "Pss"),
        }
    )  # fmt: skip
    queue.close()
    queue.join_thread()  # the result is sent before the process ends
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)  # a normal exit can abort in gloo's teardown


def _run(mode: str, checkpoint: str, options) -> list[dict]:
    from sat.helpers import get_free_port

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = get_free_port()
    processes = [context.Process(target=_worker, args=(r, port, mode, checkpoint, options, queue)) for r in range(2)]
    for process in processes:
        process.start()
    results = sorted((queue.get(timeout=600) for _ in processes), key=lambda r: r["rank"])
    for process in processes:
        process.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument(
        "--fixed-mmap-threshold",
        action="store_true",
        help="the ranks' glibc maps every block above 64 KiB and unmaps it when freed (MALLOC_MMAP_THRESHOLD_): "
        "its default raises the threshold as blocks are freed, and the heap of the many gathered ZeRO-3 "
        "parameters of a load then keeps growing",
    )
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    options = parser.parse_args()
    if options.fixed_mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by each spawned rank's glibc at start

    from sat.model import BaseModel
    from sat.training.model_io import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        args = _model_args(options)
        args.save = folder
        model = BaseModel(args)
        copy = sum(p.nbytes for p in model.parameters())
        save_checkpoint(1, model, None, None, args)
        del model
        for mode in options.modes.split(","):
            results = _run(mode, folder, options)
            for r in results:
                rows.append(
                    [
                        mode, r["rank"], f"{r['baseline'] / MIB:.0f}", f"{r['peak'] / MIB:.0f}",
                        f"{(r['peak'] - r['baseline']) / copy:.2f}", f"{r['held'] / copy:.2f}", f"{r['pss'] / MIB:.0f}",
                    ]
                )  # fmt: skip
            added = sum(r["peak"] - r["baseline"] for r in results)
            rows.append([mode, "sum", "", "", f"{added / copy:.2f}", f"{sum(r['held'] for r in results) / copy:.2f}",
                         f"{sum(r['pss'] for r in results) / MIB:.0f}"])  # fmt: skip
    headers = [
        "load",
        "rank",
        "baseline MiB",
        "peak MiB",
        "peak - baseline (copies)",
        "params held (copies)",
        "Pss MiB",
    ]
    table = markdown_table(headers, rows)
    footer = (
        f"\nOne copy = {copy / MIB:.0f} MiB ({options.layers} layers x {options.hidden}, vocabulary {options.vocab}, "
        f"fp32), 2 processes, gloo, torch {torch.__version__}"
        + (", glibc mmap threshold fixed at 64 KiB." if options.fixed_mmap_threshold else ", glibc malloc defaults.")
    )
    emit(table + footer, options.output)


if __name__ == "__main__":
    main()
