"""LoRA, prefix tuning and prompt tuning on a model-parallel model: a checkpoint saved at MP=1
loads at MP=2 (resharded) with the same logits and adapter gradients, and merge_lora at MP=2
equals the unmerged model. 2 CPU processes over gloo."""

from __future__ import annotations

import pytest
import torch
from distributed import gathered_grads, run_workers
from finetune_cases import MIXINS, inputs, logits, tiny

from sat.model import AutoModel
from sat.model.finetune import freeze_all_but
from sat.training.model_io import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.multiprocess

FAMILIES = ["gpt2", "llama-gqa"]  # prefix heads: 4 query heads for GPT-2, 2 key/value heads for LLaMA
NAMES = ("lora", "prefix", "prompt")


def add_mixins(model: torch.nn.Module, family: str) -> list[str]:
    """Add LoRA, prefix and prompt tuning; freeze the rest; the names of what trains."""
    for name in NAMES:
        build, reinit, *_ = MIXINS[name]
        model.add_mixin(name, build(family), reinit=reinit)
    return freeze_all_but(model, [pattern for name in NAMES for pattern in MIXINS[name][2]])


def run(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """Logits, adapter gradients (full, gathered) and logits after merge_lora."""
    model.eval()
    out = logits(model, family, inputs(model))
    out.square().mean().backward()
    grads = gathered_grads(model) if torch.distributed.is_initialized() else {}
    if not grads:
        grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    with torch.no_grad():
        model.get_mixin("lora").merge_lora()
        merged = logits(model, family, inputs(model))
    return {"logits": out.detach(), "grads": grads, "merged": merged}


def _worker(rank: int, world: int, folders: dict[str, str]) -> dict:
    results = {}
    for family, folder in folders.items():
        model, args = AutoModel.from_pretrained(folder, build_only=True, overwrite_args={"model_parallel_size": world})
        add_mixins(model, family)
        load_checkpoint(model, args, load_path=folder)  # resharded from MP=1
        results[family] = run(model, family)
    return results


def test_finetuned_models_at_mp2_equal_mp1(tmp_path):
    folders, expected = {}, {}
    for family in FAMILIES:
        model, args = tiny(family)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # adapters away from their start (LoRA's B = 0)
            for name in add_mixins(model, family):
                param = model.get_parameter(name)
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        args.save = folders[family] = str(tmp_path / family)
        save_checkpoint(1, model, None, None, args)
        expected[family] = run(model, family)
        assert (expected[family]["merged"] - expected[family]["logits"]).abs().max() <= 1e-5

    for result in run_workers(_worker, 2, folders):
        for family in FAMILIES:
            got, want = result[family], expected[family]
            assert (got["logits"] - want["logits"]).abs().max() <= 1e-5, family
            assert (got["merged"] - want["logits"]).abs().max() <= 1e-5, family
            assert got["grads"].keys() == want["grads"].keys()
            for name, grad in want["grads"].items():
                assert (got["grads"][name] - grad).abs().max() <= 1e-5, (family, name)
