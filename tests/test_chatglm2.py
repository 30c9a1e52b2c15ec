"""ChatGLM2Model, ChatGLM3Model and ChatGLM4Model: checkpoints of the original 0.4.12 both ways,
their own ``forward`` (masks, positions, ``past_key_values``), generation, finetuning mixins
and model parallelism with multi-query attention."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from distributed import assert_grads_equal, gathered_grads, run_workers
from finetune_cases import VOCAB
from lm_checks import check_batched_prompts, check_finetuning_reduces_the_loss, to_fill, uncached_greedy, with_cache
from model_checks import assert_recorded, check_sat_model, check_written_here_loads_in_original

from sat import mpu
from sat.generation import BaseStrategy, filling_sequence
from sat.model import AutoModel
from sat.model.cached_autoregressive_model import KVCache
from sat.model.official.chatglm2_model import ChatGLM2Model  # the original's module paths
from sat.model.official.chatglm3_model import ChatGLM3Model
from sat.model.official.chatglm4_model import ChatGLM4Model
from sat.training.model_io import save_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_chatglm_fixtures import chatglm_outputs  # noqa: E402

SEQ = 12
IDS = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


def tiny(cls=ChatGLM2Model, seed: int = 0, **overrides):
    """A 2-layer ChatGLM with 2 key/value heads for 4 query heads, q/k/v biases only, weights
    sharpened (so greedy continuations vary)."""
    args = cls.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_multi_query_heads=2,
        vocab_size=VOCAB,
        max_sequence_length=64,
        inner_hidden_size=48,
        use_bias=False,
        use_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **overrides,
    )
    torch.manual_seed(seed)
    model = cls(args).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0 if param.dim() > 1 else 1.0)
    return model, args


@pytest.mark.parametrize(
    "name, cls, mixins",
    [
        ("chatglm2", ChatGLM2Model, ["chatglm-final", "attn", "mlp"]),
        ("chatglm2_gated", ChatGLM2Model, ["chatglm-final", "attn"]),  # the gate in the backbone
        ("chatglm3", ChatGLM3Model, ["chatglm-final", "attn", "mlp"]),
        ("chatglm4", ChatGLM4Model, ["chatglm-final", "attn", "mlp"]),
    ],
)
def test_checkpoints_of_the_original_load_with_identical_outputs(name, cls, mixins):
    folder = os.path.join(FIXTURES, "written_by_original", name)
    model, _ = AutoModel.from_pretrained(folder)
    assert type(model) is cls and list(model.mixins) == mixins
    # causal logits, logits under a padding mask and a past_key_values step, as the original computed them
    assert_recorded(chatglm_outputs(model), os.path.join(folder, "logits_by_original.pt"), atol=1e-6)


@pytest.mark.parametrize("name", ["chatglm2", "chatglm3"])
def test_checkpoint_written_here_loads_in_original(name, tmp_path):
    check_written_here_loads_in_original(os.path.join(FIXTURES, "written_by_ours", name), chatglm_outputs, tmp_path)


def test_exported_and_registered():
    import sat.model

    assert sat.model.ChatGLM2Model is ChatGLM2Model and sat.model.ChatGLM4Model is ChatGLM4Model
    assert all(sat.model.get_model_class(cls.__name__) is cls for cls in (ChatGLM2Model, ChatGLM3Model, ChatGLM4Model))


def test_parameter_names_are_the_originals():
    model, _ = tiny()
    state = model.state_dict()
    assert state["mixins.attn.rotary_pos_emb.inv_freq"].shape == (2,)  # hn 8: 4 rotated channels, 2 pairs
    assert state["mixins.mlp.w2.1.weight"].shape == (48, 32)
    assert state["mixins.chatglm-final.lm_head.weight"].shape == (VOCAB, 32)
    assert state["transformer.layers.0.attention.query_key_value.bias"].shape == (32 + 2 * 2 * 8,)
    assert "transformer.position_embeddings.weight" not in state
    assert "transformer.layers.0.attention.dense.bias" not in state


def test_chatglm3_base_scale_scales_the_rotary_base():
    model, args = tiny(ChatGLM3Model, base_scale=4.0)
    assert args.base_scale == 4.0
    expected = 1.0 / (40000.0 ** (torch.arange(0, 4, 2) / 4))
    assert torch.allclose(model.get_mixin("attn").rotary_pos_emb.inv_freq, expected)
    assert ChatGLM3Model.get_args().base_scale == 1.0


@pytest.mark.parametrize("cls", [ChatGLM2Model, ChatGLM3Model, ChatGLM4Model])
def test_sat_model_trains_saves_and_reloads(cls, tmp_path):
    model, args = tiny(cls)
    check_sat_model(model, args, lambda m: m(IDS)[0], tmp_path)


def test_default_mask_and_positions_are_causal_from_zero():
    model, _ = tiny()
    positions = torch.arange(SEQ).expand(2, SEQ)
    with torch.no_grad():
        own = model(IDS)[0]
        assert torch.equal(model.get_position_ids(IDS), positions)
        assert (own - model(IDS, positions, -1)[0]).abs().max() < 1e-6
        mask = model.get_masks(IDS, None)  # True = masked
        assert mask.dtype == torch.bool and mask.shape == (2, 1, SEQ, SEQ) and mask[0, 0, 0, 1] and not mask[0, 0, 1, 0]
        assert (own - model(IDS, positions, mask)[0]).abs().max() < 1e-6  # a boolean 4-D mask: True = masked


def test_padding_mask_hides_left_padding():
    model, _ = tiny()
    padding = torch.ones(2, SEQ, dtype=torch.long)
    padding[1, :4] = 0
    positions = (padding.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(IDS, positions, attention_mask=padding)[0]
        alone = model(IDS[1:, 4:])[0]  # the second row without its padding
    assert (padded[1, 4:] - alone[0]).abs().max() < 1e-5
    assert not model.get_masks(IDS, None, padding)[1, 0, 0].any()  # a padding row sees everything


def test_own_forward_with_past_key_values_matches_the_cached_path():
    model, _ = tiny()
    prompt = 8
    with torch.no_grad():
        full = model(IDS)[0]
        outputs = model(IDS[:, :prompt])
        past = [layer["past_key_values"] for layer in outputs[1:]]
        assert past[0][0].shape == (2, 2, prompt, 8)  # [b, nkv, s, hn]
        steps = [outputs[0]]
        for i in range(prompt, SEQ):  # HF style: the new token, its position, the cache so far
            outputs = model(IDS[:, i : i + 1], torch.full((2, 1), i), past_key_values=past)
            past = [layer["past_key_values"] for layer in outputs[1:]]
            steps.append(outputs[0])
        row = model(IDS[:1], past_key_values=[(k[:1, :, :-1], v[:1, :, :-1]) for k, v in past])[0]  # one row: whole ids
        cache = KVCache(num_layers=2)
        cached = with_cache(model)(IDS[:, :prompt], None, None, mems=cache)[0]  # the KV cache mixin's path
        steps_cached = [model(IDS[:, i : i + 1], torch.full((2, 1), i), mems=cache)[0] for i in range(prompt, SEQ)]
        cached = torch.cat([cached, *steps_cached], dim=1)
    assert past[1][1].shape == (2, 2, SEQ, 8)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5
    assert (row[0, -1] - full[0, -1]).abs().max() < 1e-5
    assert (cached - full).abs().max() < 1e-5


def test_cached_greedy_equals_uncached_and_batched_prompts():  # ChatGLM4Model: vs transformers, test_glm4.py
    model, _ = tiny(seed=1)
    prompt = torch.tensor([3, 17, 42, 90, 7, 61])
    uncached = uncached_greedy(model, prompt, 32)
    tokens, _ = filling_sequence(with_cache(model), to_fill(prompt, 32), 1, BaseStrategy(top_k=1))
    assert torch.equal(tokens, uncached) and tokens.shape == (1, 38)
    assert len(set(tokens[0, 6:].tolist())) > 5
    check_batched_prompts(model, [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11]], 12)  # through the model's 4-D masks


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_mixins_reduce_the_loss(name):
    model, _ = tiny()
    losses = check_finetuning_reduces_the_loss(model.train(), name)
    assert losses[-1] < losses[0]


def _mp_worker(rank: int, world: int, folder: str) -> dict:
    model, args = AutoModel.from_pretrained(folder, overwrite_args={"model_parallel_size": world})
    attention = model.transformer.layers[0].attention
    assert mpu.get_model_parallel_world_size() == world and attention.num_multi_query_heads_per_partition == 1
    logits = model(IDS)[0]
    logits.square().mean().backward()
    return {"logits": logits.detach(), "grads": gathered_grads(model)}


@pytest.mark.multiprocess
def test_mp2_logits_and_gradients_equal_mp1(tmp_path):
    """ChatGLM2 with 2 key/value heads: each of the 2 ranks holds 2 query heads and 1 key/value
    head (the original splits them the same way; 1 key/value head cannot split over 2 ranks)."""
    model, args = tiny()
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    logits = model(IDS)[0]
    logits.square().mean().backward()
    for result in run_workers(_mp_worker, 2, str(tmp_path)):
        assert (result["logits"] - logits).abs().max() < 1e-5
        assert result["grads"].keys() == dict(model.named_parameters()).keys()
        assert_grads_equal(result["grads"], model)
