"""torch.compile of the layer stack vs eager: forward and training step of sat's GPT-2.

    python bench/compile.py [--preset small] [--backend inductor] [--device cuda] [--smoke]

One model, and a copy of it with ``sat.model.compile.compile_layers`` applied (each layer one
graph, ``fullgraph=True``), run the same inputs interleaved. Before timing, outputs (and, for
the training step, gradients) are compared: the table gives the largest difference. The first
compiled call (compilation, tens of seconds per graph for inductor on a CPU) is not timed.
Training step = forward, cross entropy, backward (no optimizer: it is the same on both sides).
``--smoke``: the tiny preset, two repeats, to check the script.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from common import (
    add_device_args,
    describe_setting,
    emit,
    interleaved,
    markdown_table,
    resolve_dtype,
    sat_gpt2_args,
    steady_malloc,
)
from models import PRESETS

from sat.model import GPT2Model
from sat.model.compile import compile_layers

SIZES = {"tiny": dict(layers=2, hidden=64, heads=4, kv_heads=4, vocab=512, batch=2, seq=32), **PRESETS}


def largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--preset", default="small", choices=sorted(SIZES))
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 2 repeats: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.repeats, args.warmup = "tiny", 2, 1
    allocator = steady_malloc(args)
    dtype = resolve_dtype(args)
    p = SIZES[args.preset]
    torch.manual_seed(0)
    eager = GPT2Model(sat_gpt2_args(p)).to(args.device, dtype)
    compiled = compile_layers(copy.deepcopy(eager), backend=args.backend)
    ids = torch.randint(0, p["vocab"], (p["batch"], p["seq"]), device=args.device)
    positions = torch.arange(p["seq"], device=args.device).expand_as(ids)

    def forward(model):
        return lambda: model(ids, positions, -1)[0]

    def train_step(model):
        def step():
            logits = model(ids, positions, -1)[0]
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            model.zero_grad(set_to_none=True)
            loss.backward()
            return [param.grad for param in model.parameters()]

        return step

    rows, compile_seconds = [], {}
    for what, make, grad in (("forward", forward, False), ("train step", train_step, True)):
        for model in (eager, compiled):
            model.train(grad)
        with torch.set_grad_enabled(grad):
            start = time.perf_counter()
            compiled_out = make(compiled)()  # compiles
            compile_seconds[what] = time.perf_counter() - start
            eager_out = make(eager)()
            difference = largest_difference(
                compiled_out if grad else [compiled_out], eager_out if grad else [eager_out]
            )
            times = interleaved(
                {"eager": make(eager), "compiled": make(compiled)}, args.repeats, args.device, args.warmup
            )
        rows.append([
            what, f"{times['eager'] * 1e3:.1f}", f"{times['compiled'] * 1e3:.1f}",
            f"{times['compiled'] / times['eager']:.3f}", f"{difference:.1e}", f"{compile_seconds[what]:.0f}",
        ])  # fmt: skip
    params = sum(x.numel() for x in eager.parameters()) / 1e6
    headers = ["what", "eager ms", "compiled ms", "compiled / eager", "max abs difference", "first call s"]
    note = (
        f"GPT-2 preset {args.preset} ({params:.0f}M, b{p['batch']} x {p['seq']}), compile_layers(backend="
        f"{args.backend!r}); {describe_setting(args, dtype, allocator)}; medians of {args.repeats} interleaved runs"
    )
    emit(f"{markdown_table(headers, rows)}\n\n{note}.", args.output)


if __name__ == "__main__":
    main()
