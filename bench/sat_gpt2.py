"""sat's own GPT-2, called as users of the original call it, vs transformers on the same weights.

    python bench/sat_gpt2.py [--presets small medium] [--parts forward train decode batched]

sat builds its GPT-2 itself (``GPT2Model(args)``, ``nn.Linear``'s ``[out, in]`` weights; not
translated from transformers) and ``sat.hf.to_hf`` loads identical weights into
``GPT2LMHeadModel``. sat is given what the original's users pass: an explicit ``(1, 1, S, S)``
lower-triangular mask tensor for forward and training, ``filling_sequence`` for greedy decoding,
and, for a batch of different prompts, ``batch_filling_sequence``; transformers is called as
its users call it (no mask, ``generate``; left padding and an attention mask for the batch).
Every part checks the two sides agree before timing: equal logits (forward), equal tokens
(decoding). Medians of interleaved runs, the order alternating; ratios are sat / transformers
time (below 1: sat is faster) or tokens/s (above 1: sat is faster).
"""

from __future__ import annotations

import argparse

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

from sat.generation import BaseStrategy, batch_filling_sequence, filling_sequence
from sat.hf import to_hf
from sat.model.mixins import CachedAutoregressiveMixin
from sat.model.official import GPT2Model

SEQUENCE = 512  # forward and training: batch 4 x 512 tokens
PROMPT_LENGTH = 32
BATCHED_PROMPTS = 8


def build(preset: str, device: str, dtype: torch.dtype, max_length: int):
    """(sat GPT2Model, transformers GPT2LMHeadModel) with identical weights, eval mode."""
    p = PRESETS[preset]
    torch.manual_seed(0)
    model = GPT2Model(sat_gpt2_args(p, max_length)).to(device, dtype).eval()
    head = model.get_mixin("gpt2-final").lm_head.weight
    with torch.no_grad():  # transformers' GPT-2 ties its head to the word embedding
        head.copy_(model.transformer.word_embeddings.weight)
    return model, to_hf(model).to(device, dtype).eval()


def causal_mask(length: int, device: str) -> torch.Tensor:
    """The ``(1, 1, S, S)`` lower-triangular mask the original's users pass."""
    return torch.ones(1, 1, length, length, device=device).tril()


def forward_and_train(model, hf, preset: str, args) -> list[list[str]]:
    p = PRESETS[preset]
    ids = torch.randint(0, p["vocab"], (4, SEQUENCE), device=args.device)
    positions = torch.arange(SEQUENCE, device=args.device).expand_as(ids)
    mask = causal_mask(SEQUENCE, args.device)
    forwards = {"sat": lambda: model(ids, positions, mask)[0], "hf": lambda: hf(ids).logits}
    with torch.no_grad():
        difference = (forwards["sat"]() - forwards["hf"]()).abs().max().item()
        if difference > 1e-3:
            raise RuntimeError(f"sat and transformers logits differ by {difference}")
        forward = interleaved(forwards, args.repeats, args.device, args.warmup)
    initial = [{key: value.clone() for key, value in m.state_dict().items()} for m in (model, hf)]
    optimizers = {"sat": torch.optim.AdamW(model.parameters()), "hf": torch.optim.AdamW(hf.parameters())}

    def train_step(name: str):
        def step():
            logits = forwards[name]()
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, p["vocab"]).float(), ids[:, 1:].reshape(-1))
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()

        return step

    model.train(), hf.train()
    train = interleaved({name: train_step(name) for name in forwards}, args.repeats, args.device, args.warmup)
    model.eval(), hf.eval()
    for m, state in zip((model, hf), initial):  # the decoding parts compare the same weights again
        m.load_state_dict(state)
    label = f"b4 x {SEQUENCE}, (1,1,S,S) mask"
    return [
        [preset, name, label, f"{t['sat'] * 1e3:.1f} ms", f"{t['hf'] * 1e3:.1f} ms", f"{t['sat'] / t['hf']:.3f}", ""]
        for name, t in (("forward", forward), ("train step", train))
    ]


def decode(model, hf, preset: str, args) -> list[str]:
    """Greedy decoding of ``--new-tokens`` after one prompt, batch 1."""
    p, new = PRESETS[preset], args.new_tokens
    prompt = torch.randint(2, p["vocab"], (PROMPT_LENGTH,), device=args.device)
    seq = torch.cat((prompt, torch.full((new,), -1, device=args.device)))
    outputs = {}

    def run_sat():
        outputs["sat"] = filling_sequence(model, seq, 1, BaseStrategy(top_k=1))[0]

    def run_hf():
        with torch.no_grad():
            outputs["hf"] = hf.generate(
                prompt[None], max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
            )

    timing = interleaved({"sat": run_sat, "hf": run_hf}, args.repeats, args.device, args.warmup)
    same = torch.equal(outputs["sat"], outputs["hf"])
    return _rate_row(preset, f"greedy {new} tokens", "batch 1", new / timing["sat"], new / timing["hf"], same)


def batched(model, hf, preset: str, args) -> list[str]:
    """Greedy decoding of ``--batched-new-tokens`` after 8 different prompts, left-padded."""
    p, new = PRESETS[preset], args.batched_new_tokens
    generator = torch.Generator().manual_seed(1)
    lengths = torch.linspace(PROMPT_LENGTH // 2, PROMPT_LENGTH, BATCHED_PROMPTS).long().tolist()
    prompts = [torch.randint(2, p["vocab"], (n,), generator=generator).to(args.device) for n in lengths]
    width = max(lengths)
    padded = torch.zeros(len(prompts), width, dtype=torch.long, device=args.device)
    attention = torch.zeros_like(padded)
    for i, prompt in enumerate(prompts):
        padded[i, width - len(prompt) :], attention[i, width - len(prompt) :] = prompt, 1
    outputs = {}

    def run_sat():
        outputs["sat"] = batch_filling_sequence(model, prompts, new, BaseStrategy(top_k=1))

    def run_hf():
        with torch.no_grad():
            outputs["hf"] = hf.generate(
                padded,
                attention_mask=attention,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )

    timing = interleaved({"sat": run_sat, "hf": run_hf}, args.repeats, args.device, args.warmup)
    same = all(
        torch.equal(ours, theirs[width - len(prompt) :])
        for ours, theirs, prompt in zip(outputs["sat"], outputs["hf"], prompts)
    )
    tokens = new * len(prompts)
    label = f"{len(prompts)} prompts of {min(lengths)}-{width}"
    return _rate_row(preset, f"greedy {new} tokens", label, tokens / timing["sat"], tokens / timing["hf"], same)


def _rate_row(preset: str, what: str, batch: str, sat_rate: float, hf_rate: float, same: bool) -> list[str]:
    ratio = f"{sat_rate / hf_rate:.2f} (tok/s)"
    return [preset, what, batch, f"{sat_rate:.1f} tok/s", f"{hf_rate:.1f} tok/s", ratio, str(same)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "medium"], choices=list(PRESETS))
    parser.add_argument("--parts", nargs="+", default=["forward", "decode", "batched"], choices=PARTS)
    parser.add_argument("--new-tokens", type=int, default=512, help="greedy decoding, batch 1")
    parser.add_argument("--batched-new-tokens", type=int, default=128, help="greedy decoding, 8 prompts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_device_args(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args)
    allocator = steady_malloc(args)  # before the models' memory is allocated
    rows = []
    for preset in args.presets:
        max_length = max(SEQUENCE, PROMPT_LENGTH + max(args.new_tokens, args.batched_new_tokens))
        model, hf = build(preset, args.device, dtype, max_length)
        model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
        for part in args.parts:
            result = PARTS[part](model, hf, preset, args)
            rows.extend(result if isinstance(result[0], list) else [result])
    headers = ["preset", "what", "inputs", "sat", "transformers", "sat / transformers", "same tokens"]
    setting = f"{describe_setting(args, dtype, allocator)}, {torch.get_num_threads()} threads"
    note = f"sat's own GPT-2 (presets of models.py), prompt {PROMPT_LENGTH} tokens; {setting}"
    emit(f"{markdown_table(headers, rows)}\n\n{note}; medians of {args.repeats} interleaved runs.", args.output)


PARTS = {"forward": forward_and_train, "decode": decode, "batched": batched}

if __name__ == "__main__":
    main()
