"""Peak memory of a training step with a large vocabulary: sat's chunked loss vs the plain one.

    python bench/loss.py [--vocab 128256] [--batch 2] [--seq 1024] [--hidden 256] [--device cuda]

One LLaMA-shaped model (``LlamaForCausalLM`` of transformers, small hidden size, large
vocabulary) and its ``sat.hf.from_hf`` translation run one training step (forward, loss,
backward) on the same tokens, each side in a fresh process:

- ``transformers``: ``model(ids, labels=ids).loss``, its own (plain) loss;
- ``sat plain``: the logits, then ``F.cross_entropy``;
- ``sat chunked``: ``sat.training.lm_loss.chunked_lm_loss``, a chunk of tokens at a time.

Peak memory is what the step adds to the memory held before it (weights, inputs): on CPU the
process's peak resident set (VmHWM, reset just before the step), on CUDA
``torch.cuda.max_memory_allocated``. ``--smoke`` runs a tiny vocabulary, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from common import add_device_args, describe_setting, emit, markdown_table, resolve_dtype

SIDES = ("transformers", "sat plain", "sat chunked")


def _resident_peak_reset() -> int:
    """The resident set now, in bytes, after resetting its recorded peak (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def build(options) -> tuple[torch.nn.Module, torch.Tensor]:
    """The transformers model (the same random weights in every process) and the tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=options.layers, hidden_size=options.hidden, num_attention_heads=options.hidden // 64,
        intermediate_size=options.hidden * 8 // 3 // 64 * 64, vocab_size=options.vocab,
        max_position_embeddings=options.seq, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    hf = LlamaForCausalLM(config)
    ids = torch.randint(0, options.vocab, (options.batch, options.seq), device=options.device)
    return hf, ids


def step(side: str, options) -> dict:
    """One training step of ``side`` in this process; its loss and peak added bytes."""
    from sat.hf import from_hf
    from sat.training.lm_loss import chunked_lm_loss

    dtype = resolve_dtype(options)
    hf, ids = build(options)
    model = hf if side == "transformers" else from_hf(hf)[0]
    model = model.to(options.device, dtype).train()
    del hf
    positions = torch.arange(options.seq, device=options.device).expand_as(ids)
    labels = torch.roll(ids, -1, 1)  # next token, the last one ignored (as the HF loss shifts)
    labels[:, -1] = -100
    cuda = options.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _resident_peak_reset()
    if side == "transformers":
        loss = model(ids, labels=ids).loss
    elif side == "sat plain":
        logits = model(ids, positions, -1)[0]  # [b, s, vocab]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        del logits
    else:
        loss, _ = chunked_lm_loss(model, labels, ids, positions, -1, chunk_size=options.chunk_size)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_bytes("VmHWM")
    return {"loss": loss.item(), "peak_bytes": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=1024, help="tokens per chunk of sat's chunked loss")
    parser.add_argument("--smoke", action="store_true", help="a tiny vocabulary and sequence: checks the script")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one measurement, in a child process
    options = parser.parse_args()
    if options.smoke:
        options.vocab, options.seq, options.hidden, options.chunk_size = 1000, 64, 128, 32
    if options.side:
        print(json.dumps(step(options.side, options)))
        return

    results = {}
    for side in SIDES:
        child = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        done = subprocess.run(child, capture_output=True, text=True, check=True, env={**os.environ})
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = results["transformers"]["peak_bytes"]
    rows = [
        [side, f"{r['peak_bytes'] / 2**20:.0f}", f"{r['peak_bytes'] / reference:.2f}", f"{r['loss']:.6f}"]
        for side, r in results.items()
    ]
    dtype = resolve_dtype(options)
    note = (
        f"LLaMA-shaped, {options.layers} layers, hidden {options.hidden}, vocabulary {options.vocab}, "
        f"batch {options.batch} x {options.seq} tokens, chunk {options.chunk_size} tokens; "
        f"{describe_setting(options, dtype, 'system malloc')}; peak = "
        + ("max_memory_allocated" if options.device.startswith("cuda") else "peak resident set (VmHWM)")
        + " added by one forward + loss + backward, each side in a fresh process"
    )
    table = markdown_table(["loss", "peak MiB", "peak / transformers", "loss value"], rows)
    emit(f"{table}\n\n{note}.", options.output)


if __name__ == "__main__":
    main()
