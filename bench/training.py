"""Training-loop overhead: ``training_main`` (DeepSpeed engine, ZeRO 0) vs a plain PyTorch loop.

    python bench/training.py [--preset small] [--batch 2] [--seq 128] [--iters 8] [--repeats 4]

Both sides train the same GPT-2 (same initial weights, same batches, dropout off) with AdamW
and gradient clipping 1.0, in one process (``training_main`` needs no launcher). Each run
times its iterations after ``--warmup`` ones, from the start of one forward step to the start
of the next, so ``training_main``'s set-up (DeepSpeed initialisation, data loaders) is not
counted but everything it does per iteration is: the engine's backward and step, logging
all-reduces, the LR schedule, timers and log lines. Runs alternate (plain, sat, sat, plain...)
so load on a shared machine, and being first in a pair, hit both; the table gives medians.

``transformers.Trainer`` with the same DeepSpeed config is not the peer here: on a CPU-only
machine it needs ``accelerate``'s DeepSpeed plugin and a launcher, and would measure
``transformers``' model as well as its loop. The plain loop isolates the loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from common import emit, markdown_table, resolve_dtype, sat_gpt2_args

from sat import get_args, training_main
from sat.model import GPT2Model
from sat.training.throughput import device_peak_flops, model_flops_per_token

PRESETS = {  # layers, hidden, heads, vocab; --batch and --seq set the tokens per iteration
    "tiny": dict(layers=2, hidden=128, heads=4, vocab=1024),
    "small": dict(layers=12, hidden=768, heads=12, vocab=50304),  # GPT-2 small, 124M
    "medium": dict(layers=24, hidden=1024, heads=16, vocab=50304),  # GPT-2 medium, 355M
}
CLIP = 1.0


class RandomTokens(torch.utils.data.Dataset):
    """``n`` rows of ``seq + 1`` random token ids, the same for every run."""

    def __init__(self, n: int, seq: int, vocab: int):
        self.rows = torch.randint(0, vocab, (n, seq + 1), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


def lm_loss(model, rows: torch.Tensor) -> torch.Tensor:
    tokens, targets = rows[:, :-1], rows[:, 1:]
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    logits = model(tokens, positions, -1)[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sat_args(p: dict, iters: int, save: str, extra: list[str] = ()):
    argv = [
        "--num-layers", str(p["layers"]), "--hidden-size", str(p["hidden"]), "--num-attention-heads", str(p["heads"]),
        "--vocab-size", str(p["vocab"]), "--max-sequence-length", str(p["seq"]),
        "--hidden-dropout", "0", "--attention-dropout", "0", "--train-data", "random", "--split", "1",
        "--batch-size", str(p["batch"]), "--train-iters", str(iters), "--lr", "1e-4", "--warmup", "0",
        "--lr-decay-style", "constant", "--log-interval", "5", "--num-workers", "0", "--save", save,
        "--save-interval", "100000", "--experiment-name", "bench",
    ]  # fmt: skip
    return get_args([*argv, *extra])


def run_sat(p: dict, iters: int, state: dict, starts: list[float]) -> None:
    """``iters`` iterations of ``training_main``; ``starts`` gets each forward step's start."""
    with tempfile.TemporaryDirectory() as save:
        args = sat_args(p, iters, save, ["--bf16"] if p["dtype"] == torch.bfloat16 else [])
        model = GPT2Model(args)
        model.load_state_dict(state)

        def forward_step(data_iterator, model, args, timers):
            starts.append(time.perf_counter())
            return lm_loss(model, next(data_iterator).to(args.device))

        training_main(args, model, forward_step, lambda path, args: RandomTokens(4096, p["seq"], p["vocab"]))
    starts.append(time.perf_counter())  # after the last iteration (and the final save: not counted)


def run_plain(p: dict, iters: int, state: dict, starts: list[float]) -> None:
    """The same training as a textbook PyTorch loop."""
    model = GPT2Model(sat_gpt2_args(p))
    model.load_state_dict(state)
    model.to(p["device"], p["dtype"]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(RandomTokens(4096, p["seq"], p["vocab"]), batch_size=p["batch"], shuffle=True)
    batches = iter(loader)
    for _ in range(iters):
        starts.append(time.perf_counter())
        loss = lm_loss(model, next(batches).to(p["device"]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # training_main reads every loss for its logs; so does any real loop
    starts.append(time.perf_counter())


def per_iteration(starts: list[float], warmup: int) -> float:
    """Median seconds per iteration after ``warmup``, each from its forward step's start to the
    next one's (the last iteration, which runs into the loop's end, is not counted)."""
    timed = starts[warmup:-1]
    return statistics.median(b - a for a, b in zip(timed[:-1], timed[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--iters", type=int, default=8, help="iterations per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4, help="runs of each side, alternating (even is fair)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training_main takes the GPU it finds)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 4 iterations, 2 repeats: checks the script")
    parser.add_argument(
        "--engines", action="store_true", help="compare DeepSpeed ZeRO-2 and --engine fsdp on 2 processes instead"
    )
    options = parser.parse_args()
    if options.smoke:
        options.preset, options.iters, options.warmup, options.repeats, options.seq = "tiny", 4, 1, 2, 32
    logging.getLogger("sat").setLevel(logging.WARNING)  # training_main's log lines are not the point here
    torch.set_num_threads(options.threads)
    p = dict(PRESETS[options.preset], batch=options.batch, seq=options.seq)
    p.update(device=options.device, dtype=resolve_dtype(options))
    if options.engines:
        from training_engines import compare_engines

        compare_engines(p, options)
        return
    torch.manual_seed(0)
    state = GPT2Model(sat_gpt2_args(p)).state_dict()
    params = sum(v.numel() for v in state.values())

    sides = [("plain PyTorch loop", run_plain), ("sat training_main", run_sat)]
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for repeat in range(options.repeats):
        for name, run in sides if repeat % 2 == 0 else sides[::-1]:
            starts: list[float] = []
            run(p, options.iters, state, starts)
            times[name].append(per_iteration(starts, options.warmup))
            print(f"repeat {repeat + 1}/{options.repeats} {name}: {times[name][-1] * 1000:.1f} ms/iteration",
                  file=sys.stderr, flush=True)  # fmt: skip

    tokens = p["batch"] * p["seq"]
    plain = statistics.median(times["plain PyTorch loop"])
    # MFU as training_main's log line computes it (sat.training.throughput)
    flops_per_token = model_flops_per_token(params, p["layers"], p["hidden"], p["seq"])
    peak = device_peak_flops(torch.device(options.device))
    rows = []
    for name, values in times.items():
        ms = statistics.median(values)
        mfu = "?" if peak is None else f"{100 * flops_per_token * tokens / ms / peak:.1f}%"
        rows.append([name, f"{ms * 1000:.1f}", f"{tokens / ms:.0f}", mfu, f"{ms / plain:.3f}"])
    print(
        f"GPT-2 preset {options.preset}: {params / 1e6:.1f}M parameters, batch {p['batch']} x {p['seq']} tokens, "
        f"{options.device} {str(p['dtype']).replace('torch.', '')}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores; median of {options.repeats} runs x {options.iters - options.warmup} timed "
        f"iterations; MFU against {'?' if peak is None else f'{peak / 1e9:.0f}'} GFLOP/s"
    )
    emit(markdown_table(["loop", "ms/iteration", "tokens/s", "MFU", "time / plain"], rows), options.output)


if __name__ == "__main__":
    main()
