"""Greedy decoding speed: sat's filling_sequence vs transformers' generate, identical weights.

    python bench/generation.py [--families FAMILY ...] [--new-tokens 128 512] [--batch 1 8]

``FAMILY``: gpt2, gptj, gpt_neo, llama, mixtral, qwen2, mistral, glm.

Tokens per second (new tokens x batch / seconds), medians of interleaved runs; the ratio is
sat / transformers (above 1: sat is faster). Both decode greedily to exactly the given length
and their outputs are checked to be identical.
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import add_device_args, describe_setting, emit, interleaved, markdown_table, resolve_dtype, steady_malloc
from models import PRESETS, build_hf

from sat.generation import BaseStrategy, filling_sequence
from sat.hf import from_hf
from sat.model.mixins import CachedAutoregressiveMixin

PROMPT_LENGTH = 32


def measure(hf, model, prompt: torch.Tensor, new: int, batch: int, args) -> tuple[float, float, bool]:
    """(sat tokens/s, transformers tokens/s, identical outputs) for one length and batch."""
    seq = torch.cat((prompt, torch.full((new,), -1, device=prompt.device)))
    outputs = {}

    def run_sat():
        outputs["sat"] = filling_sequence(model, seq, batch, BaseStrategy(top_k=1))[0]

    def run_hf():
        with torch.no_grad():
            outputs["hf"] = hf.generate(
                prompt[None].expand(batch, -1), max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
            )

    timing = interleaved({"sat": run_sat, "hf": run_hf}, args.repeats, args.device, args.warmup)
    return new * batch / timing["sat"], new * batch / timing["hf"], torch.equal(outputs["sat"], outputs["hf"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--preset", default="medium", choices=list(PRESETS))
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    add_device_args(parser)
    args = parser.parse_args()
    dtype = resolve_dtype(args)
    allocator = steady_malloc(args)  # before the models' memory is allocated
    rows = []
    for family in args.families:
        p = dict(PRESETS[args.preset], seq=PROMPT_LENGTH + max(args.new_tokens))
        torch.manual_seed(0)
        hf = build_hf(family, p).to(args.device, dtype).eval()
        model, _ = from_hf(copy.deepcopy(hf))  # its own weights, as a separately loaded model has
        model = model.to(args.device, dtype).eval()
        model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
        prompt = torch.randint(2, p["vocab"], (PROMPT_LENGTH,), device=args.device)
        for new in args.new_tokens:
            for batch in args.batch:
                sat_rate, hf_rate, same = measure(hf, model, prompt, new, batch, args)
                rows.append(
                    [family, new, batch, f"{sat_rate:.1f}", f"{hf_rate:.1f}", f"{sat_rate / hf_rate:.2f}", same]
                )
    params = sum(x.numel() for x in hf.parameters()) / 1e6
    device = describe_setting(args, dtype, allocator)
    headers = ["family", "new tokens", "batch", "sat tok/s", "transformers tok/s", "sat / transformers", "same tokens"]
    note = f"{args.preset} preset ({params:.0f}M params, last family), prompt {PROMPT_LENGTH} tokens; {device}"
    emit(f"{markdown_table(headers, rows)}\n\n{note}; medians of {args.repeats} interleaved runs.", args.output)


if __name__ == "__main__":
    main()
