"""Finetuning mixins on T5 (encoder-decoder): LoRA on both halves including the decoder's cross
attention, merged and exported; prefix tuning and adapters."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from transformers import T5Config, T5ForConditionalGeneration

from sat.hf import from_hf, to_hf
from sat.model import AutoModel
from sat.model.finetune import AdapterMixin, LoraLinear, LoraMixin, PrefixTuningMixin, freeze_all_but
from sat.training.model_io import save_checkpoint

ENC_IDS = torch.randint(2, 64, (2, 10), generator=torch.Generator().manual_seed(0))
DEC_IDS = torch.randint(2, 64, (2, 8), generator=torch.Generator().manual_seed(1))


def tiny_t5() -> tuple[torch.nn.Module, argparse.Namespace]:
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model, args = from_hf(T5ForConditionalGeneration(config))
    return model, args


def logits(model) -> torch.Tensor:
    return model(ENC_IDS, DEC_IDS)[1]  # [b, s_dec, vocab]


def train(model, steps: int = 10, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = logits(model)
        loss = F.cross_entropy(out[:, :-1].reshape(-1, 64), DEC_IDS[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_lora_on_both_halves_with_cross_attention_merges_saves_and_exports(tmp_path):
    model, args = tiny_t5()
    with torch.no_grad():
        base = logits(model)
    for half in (model.encoder, model.decoder):
        half.add_mixin("lora", LoraMixin(2, r=4, lora_alpha=8), reinit=True)
    cross = model.decoder.transformer.layers[1].cross_attention
    assert all(isinstance(getattr(cross, name), LoraLinear) for name in ("query", "key_value", "dense"))
    with torch.no_grad():
        assert torch.equal(logits(model), base)

    freeze_all_but(model, ["matrix_A", "matrix_B"])
    losses = train(model)
    assert losses[-1] < losses[0] - 0.1
    assert cross.key_value.matrix_B[1].grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        unmerged = logits(model)
        for half in (model.encoder, model.decoder):
            half.get_mixin("lora").merge_lora()
        merged = logits(model)
        print(
            f"t5 LoRA: loss {losses[0]:.4f} -> {losses[-1]:.4f}, merge difference {(merged - unmerged).abs().max():.2e}"
        )
        assert (merged - unmerged).abs().max() <= 1e-5
        hf = to_hf(model)
        assert (hf(input_ids=ENC_IDS, decoder_input_ids=DEC_IDS).logits - merged).abs().max() <= 1e-5
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    reloaded, _ = AutoModel.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(logits(reloaded), merged)


def test_prefix_tuning_and_adapters_on_both_halves():
    model, _ = tiny_t5()
    with torch.no_grad():
        base = logits(model)
    for half in (model.encoder, model.decoder):
        half.add_mixin("prefix", PrefixTuningMixin(2, 8, 4, 3))  # after t5-attention: wraps its bias
        half.add_mixin("adapter", AdapterMixin(2, 32, 8), reinit=True)
    with torch.no_grad():
        assert not torch.allclose(logits(model), base, atol=1e-6)
    freeze_all_but(model, [r"mixins\.prefix\.", r"mixins\.adapter\."])
    losses = train(model, lr=0.05)
    assert losses[-1] < losses[0] - 0.1
