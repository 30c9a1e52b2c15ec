"""Forward and training-step speed: sat vs transformers on identical weights.

    python bench/models.py [--families FAMILY ...] [--presets small medium] [--device cuda]

``FAMILY``: gpt2, gptj, gpt_neo, llama, mixtral, qwen2, mistral, glm.

For each family and preset a random ``transformers`` model is built from its config class and
translated with ``sat.hf.from_hf``; both run the same inputs, interleaved, and the table gives
median milliseconds and the time ratio sat / transformers (below 1: sat is faster).
Training step = forward, cross-entropy, backward, AdamW step.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from common import add_device_args, describe_setting, emit, interleaved, markdown_table, resolve_dtype, steady_malloc

from sat.hf import from_hf

PRESETS = {  # layers, hidden, heads, kv heads (llama-shaped), vocab, batch, sequence
    "small": dict(layers=4, hidden=256, heads=4, kv_heads=2, vocab=8192, batch=4, seq=128),
    "medium": dict(layers=12, hidden=768, heads=12, kv_heads=4, vocab=32000, batch=4, seq=256),
    # TinyLlama-1.1B's shape (1.1B as LLaMA), for GPUs: bench/gpu_suite.sh
    "1b": dict(layers=22, hidden=2048, heads=32, kv_heads=4, vocab=32000, batch=4, seq=1024),
}


def build_hf(family: str, p: dict):
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_layer=p["layers"],
            n_embd=p["hidden"],
            n_head=p["heads"],
            vocab_size=p["vocab"],
            n_positions=p["seq"],
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(config)
    if family == "gpt_neo":
        from transformers import GPTNeoConfig, GPTNeoForCausalLM

        config = GPTNeoConfig(
            num_layers=p["layers"],
            hidden_size=p["hidden"],
            num_heads=p["heads"],
            vocab_size=p["vocab"],
            max_position_embeddings=p["seq"],
            attention_types=[[["global", "local"], p["layers"] // 2]],
            window_size=p["seq"] // 4,  # shorter than the sequence: local layers do window
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPTNeoForCausalLM(config)
    if family == "gptj":
        from transformers import GPTJConfig, GPTJForCausalLM

        config = GPTJConfig(
            n_layer=p["layers"],
            n_embd=p["hidden"],
            n_head=p["heads"],
            rotary_dim=p["hidden"] // p["heads"] // 4,  # GPT-J 6B rotates a quarter of each head
            vocab_size=p["vocab"],
            n_positions=p["seq"],
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPTJForCausalLM(config)
    if family == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        # LLaMA's sizes, its MLP width per expert: 4 experts, 2 per token.
        return MixtralForCausalLM(MixtralConfig(**llama_sizes(p), num_local_experts=4, num_experts_per_tok=2))
    if family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**llama_sizes(p)))
    if family == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        # A window shorter than the sequence: the windowed attention is what runs.
        return MistralForCausalLM(MistralConfig(**llama_sizes(p), sliding_window=p["seq"] // 2))
    if family == "glm":
        from transformers import GlmConfig, GlmForCausalLM

        # GLM-4's layout on LLaMA's sizes: q/k/v biases, rotary on half of each head, fused gate/up.
        return GlmForCausalLM(GlmConfig(**llama_sizes(p), head_dim=p["hidden"] // p["heads"], pad_token_id=0))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**llama_sizes(p)))


def llama_sizes(p: dict) -> dict:
    """The config fields of the LLaMA-shaped families (llama, qwen2, mistral) for preset ``p``."""
    return dict(
        num_hidden_layers=p["layers"],
        hidden_size=p["hidden"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        intermediate_size=int(p["hidden"] * 8 / 3) // 64 * 64,
        vocab_size=p["vocab"],
        max_position_embeddings=p["seq"],
        bos_token_id=0,
        eos_token_id=1,
    )


def measure(family: str, preset: str, args, dtype: torch.dtype) -> list[list[str]]:
    """Table rows (forward, train step) for one family and preset."""
    p = PRESETS[preset]
    torch.manual_seed(0)
    hf = build_hf(family, p).to(args.device, dtype)
    sat_model, _ = from_hf(copy.deepcopy(hf))  # own weights: both train, neither sees the other's steps
    sat_model = sat_model.to(args.device, dtype)
    ids = torch.randint(0, p["vocab"], (p["batch"], p["seq"]), device=args.device)
    positions = torch.arange(p["seq"], device=args.device).expand_as(ids)
    forwards = {"sat": lambda: sat_model(ids, positions, -1)[0], "hf": lambda: hf(ids).logits}

    def train_step(forward, optimizer):
        def step():
            logits = forward()
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, p["vocab"]).float(), ids[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    sat_model.eval(), hf.eval()
    with torch.no_grad():
        forward = interleaved(forwards, args.repeats, args.device, args.warmup)
    sat_model.train(), hf.train()
    optimizers = {"sat": torch.optim.AdamW(sat_model.parameters()), "hf": torch.optim.AdamW(hf.parameters())}
    train = interleaved(
        {name: train_step(forwards[name], optimizers[name]) for name in forwards},
        args.repeats,
        args.device,
        args.warmup,
    )
    params = sum(x.numel() for x in hf.parameters()) / 1e6
    label = f"{preset} ({params:.0f}M, b{p['batch']} x {p['seq']})"
    return [
        [family, label, name, f"{t['sat'] * 1e3:.1f}", f"{t['hf'] * 1e3:.1f}", f"{t['sat'] / t['hf']:.3f}"]
        for name, t in (("forward", forward), ("train step", train))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    add_device_args(parser)
    args = parser.parse_args()
    dtype = resolve_dtype(args)
    allocator = steady_malloc(args)  # before the models' memory is allocated
    rows = [row for family in args.families for preset in args.presets for row in measure(family, preset, args, dtype)]
    device = describe_setting(args, dtype, allocator)
    table = markdown_table(["family", "preset", "what", "sat ms", "transformers ms", "sat / transformers"], rows)
    emit(f"{table}\n\n{device}; medians of {args.repeats} interleaved runs.", args.output)


if __name__ == "__main__":
    main()
