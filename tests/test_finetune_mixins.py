"""Each finetuning mixin on GPT-2, LLaMA (GQA) and BERT: what it does to the outputs when added,
which parameters train once the rest is frozen, and that a few steps reduce a tiny task's loss."""

from __future__ import annotations

import pytest
import torch
from finetune_cases import FAMILIES, IDS, MIXINS, PROMPT_LEN, inputs, logits, task_loss, tiny, train, with_mixin

from sat.model.finetune import AdapterMixin, FFADDMixin, count_parameters, freeze_all_but

STARTS_EQUAL = {"lora", "ffadd"}  # B = 0 / up = 0: exactly the base model until trained


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", MIXINS)
def test_mixin_changes_outputs_trains_only_itself_and_reduces_the_loss(family, name):
    base, _ = tiny(family)
    model = with_mixin(family, name)
    with torch.no_grad():
        expected = logits(base, family)
        got = logits(model, family, inputs(model))[:, -IDS.shape[1] :]  # the real tokens
    if name in STARTS_EQUAL:
        assert torch.equal(got, expected)
    else:
        assert not torch.allclose(got, expected, atol=1e-6)
        if name == "adapter":  # near-zero initialisation: close to the base model
            assert torch.allclose(got, expected, atol=1e-2)

    trainable = freeze_all_but(model, MIXINS[name][2])
    counts = count_parameters(model)
    assert 0 < counts.trainable < counts.total / 5
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    task_loss(model, family).backward()
    for param_name, param in model.named_parameters():
        if param_name in trainable:
            assert param.grad is not None, param_name
        else:
            assert param.grad is None, param_name
    assert any(model.get_parameter(n).grad.abs().sum() > 0 for n in trainable)

    model.zero_grad()
    losses = train(model, family, lr=MIXINS[name][3])
    print(f"{family} {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < losses[0] - 0.02
    with torch.no_grad():
        assert not torch.allclose(logits(model, family, inputs(model))[:, -IDS.shape[1] :], expected, atol=1e-4)
    for param_name, param in base.named_parameters():  # the frozen base weights did not move
        if param_name in model.state_dict():
            assert torch.equal(model.state_dict()[param_name], param), param_name


@pytest.mark.parametrize(
    "kwargs", [dict(layernorm_order="pre"), dict(layernorm_order="post"), dict(layernorm_order="sandwich")]
)
def test_adapters_wrap_attention_and_mlp_outputs_in_every_layer_order(kwargs):
    model, _ = tiny("gpt2", **kwargs)
    adapter = AdapterMixin(2, 32, 8)
    model.add_mixin("adapter", adapter)  # no reinit: random adapters of the usual scale
    logits(model, "gpt2").square().mean().backward()
    for linear in (*adapter.ff1, *adapter.ff2, *adapter.ff3, *adapter.ff4):
        assert linear.weight.grad.abs().sum() > 0


def test_ffadd_constructs_with_a_layer_range():
    mixin = FFADDMixin(32, layer_num=4, r=2, layer_range=[1, 3])
    assert [len(block) for block in mixin.ffadd_linear] == [0, 2, 0, 2]
    assert mixin.ffadd_linear[1][0].weight.shape == (2, 32)
    with pytest.raises(ValueError, match="rank r >= 1"):
        FFADDMixin(32, 4)


def test_prompt_tokens_are_positions_like_any_other():
    model = with_mixin("gpt2", "prompt")
    prompt = model.get_mixin("prompt")
    assert prompt.virtual_token_ids().tolist() == list(range(96, 96 + PROMPT_LEN))
    # reinit starts from vocabulary embeddings
    embeddings = model.transformer.word_embeddings.weight
    assert all((embeddings == row).all(-1).any() for row in prompt.prompt)
    # a virtual token behaves as a real token whose embedding is the prompt row
    with torch.no_grad():
        prompt.prompt[0].copy_(embeddings[IDS[0, 0]])
        ids = IDS.clone()
        ids[:, 0] = prompt.virtual_token_ids()[0]
        assert torch.equal(logits(model, "gpt2", ids)[0], logits(model, "gpt2")[0])


def test_freeze_all_but_needs_a_match():
    model, _ = tiny("gpt2")
    with pytest.raises(ValueError, match="nothing would train"):
        freeze_all_but(model, ["no-such-parameter"])
    assert count_parameters(model).trainable == count_parameters(model).total  # nothing was frozen
    freeze_all_but(model, ["word_embeddings"])
    assert str(count_parameters(model)) == f"trainable params: {96 * 32:,} of {count_parameters(model).total:,} (" + (
        f"{100 * 96 * 32 / count_parameters(model).total:.4g}%)"
    )
