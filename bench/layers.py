"""One transformer block, part by part: sat vs transformers on identical weights.

    python bench/layers.py [--families gpt2 llama] [--preset medium] [--repeats 40]

Where bench/models.py times whole models, this times layer 0 of the same models alone: its
attention (norm excluded), its MLP and the whole block, forward without autograd and forward
plus backward. A cost that sat's hooks add to every layer shows here without the embedding,
output head and loss around it. Milliseconds, medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from functools import partial

import torch
from common import add_device_args, describe_setting, emit, interleaved, markdown_table, resolve_dtype, steady_malloc
from models import PRESETS, build_hf

from sat.hf import from_hf
from sat.ops.attention import CAUSAL_MASK, resolve_attention_mask


def layer_parts(family: str, hf, sat_model, hidden: torch.Tensor, positions: torch.Tensor) -> dict[str, tuple]:
    """``{part: (sat callable, transformers callable)}``, each taking the hidden states."""
    transformer = sat_model.transformer
    sat_layer = transformer.layers[0]
    mask = resolve_attention_mask(CAUSAL_MASK, hidden.shape[1], hidden.dtype, hidden.device)  # as in the model
    kw_args = dict(layer_id=0, position_ids=positions)
    if family == "gpt2":
        block = hf.transformer.h[0]
        hf_parts = (lambda x: block.attn(x)[0], block.mlp, block)
    else:
        block = hf.model.layers[0]
        rotary = hf.model.rotary_emb(hidden, positions)  # computed once per forward in the model
        hf_parts = (
            lambda x: block.self_attn(x, position_embeddings=rotary, attention_mask=None)[0],
            block.mlp,
            lambda x: block(x, position_embeddings=rotary, position_ids=positions),
        )
    sat_parts = (
        lambda x: sat_layer.attention(x, mask, **kw_args),
        lambda x: sat_layer.mlp(x, **kw_args),
        lambda x: sat_layer(x, mask, **kw_args),
    )
    return dict(zip(("attention", "mlp", "block"), zip(sat_parts, hf_parts)))


def first(output: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden states of a module that may return a tuple."""
    return output[0] if isinstance(output, tuple) else output


def backward_through(part: Callable, hidden: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        first(part(hidden)).sum().backward()

    return step


def measure(family: str, args, dtype: torch.dtype) -> list[list[str]]:
    p = PRESETS[args.preset]
    torch.manual_seed(0)
    hf = build_hf(family, p).to(args.device, dtype)
    sat_model, _ = from_hf(copy.deepcopy(hf))
    sat_model = sat_model.to(args.device, dtype)
    hidden = torch.randn(p["batch"], p["seq"], p["hidden"], device=args.device, dtype=dtype)
    positions = torch.arange(p["seq"], device=args.device).expand(p["batch"], -1)
    rows = []
    for part, (sat_part, hf_part) in layer_parts(family, hf, sat_model, hidden, positions).items():
        sat_model.eval(), hf.eval()
        with torch.no_grad():
            # The same computation on both sides (causal attention included), or the times mean nothing.
            torch.testing.assert_close(first(sat_part(hidden)), first(hf_part(hidden)), msg=f"{family} {part}")
            forwards = {"sat": partial(sat_part, hidden), "hf": partial(hf_part, hidden)}
            forward = interleaved(forwards, args.repeats, args.device, args.warmup)
        sat_model.train(), hf.train()
        steps = {"sat": backward_through(sat_part, hidden), "hf": backward_through(hf_part, hidden)}
        both = interleaved(steps, args.repeats, args.device, args.warmup)
        for what, t in (("forward", forward), ("forward + backward", both)):
            ms = (t["sat"] * 1e3, t["hf"] * 1e3)
            rows.append([family, part, what, f"{ms[0]:.2f}", f"{ms[1]:.2f}", f"{ms[0] / ms[1]:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--preset", default="medium", choices=list(PRESETS))
    add_device_args(parser)
    parser.set_defaults(repeats=40)
    args = parser.parse_args()
    dtype = resolve_dtype(args)
    allocator = steady_malloc(args)
    rows = [row for family in args.families for row in measure(family, args, dtype)]
    p = PRESETS[args.preset]
    headers = ["family", "part of layer 0", "what", "sat ms", "transformers ms", "sat / transformers"]
    note = f"{args.preset} preset, {p['batch']} x {p['seq']} tokens; {describe_setting(args, dtype, allocator)}"
    emit(f"{markdown_table(headers, rows)}\n\n{note}; medians of {args.repeats} interleaved runs.", args.output)


if __name__ == "__main__":
    main()
