"""ChatGLMModel (ChatGLM-6B, v1): transformers has no native class, so correctness is against
the original SwissArmyTransformer 0.4.12.

Reference outputs: ``tests/fixtures/original_sat/make_chatglm_glm130b_fixtures.py`` built a tiny
ChatGLMModel with the original (on CPU in fp32, its PyTorch rotary, nothing patched), saved it
and recorded ChatGLM's own ``forward`` on a left-padded ``[gMASK]`` batch, on a ``[MASK]`` prompt
and on the last token with ``past_key_values``; and the original loaded a checkpoint written here
and recorded the same outputs.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest
import torch
from finetune_cases import tiny_model
from lm_checks import check_finetuning_reduces_the_loss
from model_checks import assert_recorded, check_sat_model, check_written_here_loads_in_original

from sat.generation import BaseStrategy, filling_sequence
from sat.model import AutoModel, get_model_class
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin, KVCache
from sat.model.official import ChatGLMModel
from sat.model.official.glm_model import get_masks_and_position_ids_glm

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_chatglm_glm130b_fixtures import chatglm_outputs  # noqa: E402

PAD, MASK, GMASK, BOS = 3, 92, 93, 94
TOKENS = dict(bos_token_id=BOS, mask_token_id=MASK, gmask_token_id=GMASK, pad_token_id=PAD)
PROMPT = [11, 25, 37, 48, 52, 60, GMASK, BOS]
NEW_TOKENS = 32


def tiny(seed: int = 4, **overrides):
    """A 2-layer, hidden-32, post-LN ChatGLM with vocabulary 96, weights sharpened (seed 4:
    its greedy continuation of ``PROMPT`` varies, many seeds repeat one token)."""
    return tiny_model(ChatGLMModel, {"layernorm_order": "post", **TOKENS, **overrides}, seed)


def test_checkpoint_written_by_original_loads_with_identical_outputs():
    folder = os.path.join(FIXTURES, "written_by_original", "chatglm")
    model, _ = AutoModel.from_pretrained(folder)
    assert isinstance(model, ChatGLMModel)
    assert_recorded(chatglm_outputs(model), os.path.join(folder, "logits_by_original.pt"))


def test_checkpoint_written_here_loads_in_original(tmp_path):
    folder = os.path.join(FIXTURES, "written_by_ours", "chatglm")
    check_written_here_loads_in_original(folder, chatglm_outputs, tmp_path)


def test_structure_names_and_arguments():
    import sat.model  # the original imported the zoo from here

    assert sat.model.ChatGLMModel is ChatGLMModel and get_model_class("ChatGLMModel") is ChatGLMModel
    model, args = tiny()
    assert list(model.mixins) == ["chatglm-final", "chatglm-attn", "chatglm-layer"]
    assert model.get_mixin("chatglm-layer").alpha == model.transformer.residual_scale == 2.0  # sqrt(2 * 2)
    assert (model.bos_token_id, model.mask_token_id, model.gmask_token_id, model.pad_token_id) == (94, 92, 93, 3)
    keys = set(model.state_dict())
    assert {"mixins.chatglm-final.lm_head.weight", "mixins.chatglm-attn.rotary_emb.inv_freq"} <= keys
    assert not any("position_embeddings" in key for key in keys)
    assert model.get_mixin("chatglm-attn").rotary_emb.inv_freq.shape == (2,)  # half of a head of 8: 4 channels


def test_masks_and_positions_of_a_padded_batch():
    model, _ = tiny()
    ids = torch.tensor([[5, 6, GMASK, BOS, 7], [PAD, PAD, GMASK, BOS, 8]])
    mask, positions = model.get_inputs(ids)
    assert mask.shape == (2, 1, 5, 5)
    # The prompt (before bos) is seen by all, then causal; padding sees and is seen by nobody.
    assert mask[0, 0].tolist() == [[1, 1, 1, 0, 0]] * 3 + [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert mask[1, 0].tolist() == [[0] * 5] * 2 + [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert positions[0].tolist() == [[0, 1, 2, 2, 2], [0, 0, 0, 1, 2]]
    assert positions[1].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 2]]
    with_mask = torch.tensor([[5, MASK, 6, BOS, 7]])  # no [gMASK]: positions around [MASK]
    assert model.get_inputs(with_mask)[1][0].tolist() == [[0, 1, 2, 1, 1], [0, 0, 0, 1, 2]]
    with pytest.raises(ValueError, match="needs its bos token"):
        model.get_inputs(torch.tensor([[5, GMASK, 6]]))
    with pytest.raises(ValueError, match=r"position_ids \[b, 2, s\] \(positions, block positions\), got \(1, 5\)"):
        model(with_mask, torch.arange(5)[None], -1)


def test_bool_mask_is_transformers_convention():
    model, _ = tiny()
    model.eval()
    ids = torch.tensor([PROMPT])
    mask, positions = model.get_inputs(ids)
    with torch.no_grad():
        assert torch.equal(model(ids, positions, mask < 0.5)[0], model(ids)[0])


def greedy_with_past_key_values(model, ids: torch.Tensor, new_tokens: int):
    """ChatGLM's own decoding: the whole sequence each step, only its last token run, with the
    layers' ``past_key_values``. Returns the tokens and each step's last logits."""
    outputs = model(ids)
    steps = [outputs[0][:, -1]]
    for _ in range(new_tokens):
        ids = torch.cat((ids, steps[-1].argmax(-1, keepdim=True)), dim=1)
        if len(steps) == new_tokens:
            break
        outputs = model(ids, past_key_values=[layer["past_key_values"] for layer in outputs[1:]])
        steps.append(outputs[0][:, -1])
    return ids, torch.stack(steps, dim=1)  # [b, s + new], [b, new, vocab]


def test_cached_greedy_equals_uncached_and_past_key_values():
    """32 greedy tokens: ``filling_sequence`` with the KV cache and GLM's mask and positions, a
    loop of full forwards (ChatGLM's own masks), and its ``past_key_values`` decoding agree."""
    model, _ = tiny()
    model.eval()
    uncached = torch.tensor([PROMPT])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            uncached = torch.cat((uncached, model(uncached)[0][:, -1:].argmax(-1)), dim=1)
        with_past, _ = greedy_with_past_key_values(model, torch.tensor([PROMPT]), NEW_TOKENS)
    builder = functools.partial(
        get_masks_and_position_ids_glm, mask_position=PROMPT.index(GMASK), context_length=PROMPT.index(BOS)
    )
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    seq = torch.cat((torch.tensor(PROMPT), torch.full((NEW_TOKENS,), -1)))
    cached, _ = filling_sequence(model, seq, 1, BaseStrategy(top_k=1), get_masks_and_position_ids=builder)
    assert torch.equal(cached, uncached) and torch.equal(with_past, uncached)
    assert len(set(cached[0, len(PROMPT) :].tolist())) > 5  # a varied continuation


def test_forward_with_past_key_values_matches_the_cached_path():
    """Each step's logits of ChatGLM's ``past_key_values`` decoding equal those of the KV cache
    (``mems=KVCache``) fed one token at a time with explicit masks and positions."""
    model, _ = tiny()
    model.eval()
    ids, expected = greedy_with_past_key_values(model, torch.tensor([PROMPT]), 8)
    mask, positions = model.get_inputs(ids)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    cache, start = KVCache(num_layers=2), len(PROMPT)
    with torch.no_grad():
        steps = [model(ids[:, :start], positions[..., :start], mask[..., :start, :start], mems=cache)[0][:, -1]]
        for i in range(start, ids.shape[1] - 1):
            steps.append(
                model(ids[:, i : i + 1], positions[..., i : i + 1], mask[..., i : i + 1, : i + 1], mems=cache)[0][:, -1]
            )
    assert (torch.stack(steps, dim=1) - expected).abs().max() < 1e-5


def test_batched_prompts_equal_each_prompt_alone():
    """Left-padded prompts of different lengths decode with ``past_key_values`` as each alone."""
    model, _ = tiny()
    model.eval()
    short = [40, 41, GMASK, BOS]
    batch = torch.tensor([PROMPT, [PAD] * (len(PROMPT) - len(short)) + short])
    with torch.no_grad():
        together, _ = greedy_with_past_key_values(model, batch, 12)
        first, _ = greedy_with_past_key_values(model, torch.tensor([PROMPT]), 12)
        second, _ = greedy_with_past_key_values(model, torch.tensor([short]), 12)
    assert torch.equal(together[0], first[0])
    assert torch.equal(together[1, len(PROMPT) - len(short) :], second[0])


def test_sat_model_trains_saves_and_reloads(tmp_path):
    model, args = tiny()

    def forward(model):
        return model(torch.tensor([PROMPT, [PAD, *PROMPT[1:]]]))[0]

    check_sat_model(model, args, forward, tmp_path)


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_reduces_the_loss(name):
    model, _ = tiny()
    losses = check_finetuning_reduces_the_loss(model, name, family="chatglm")
    print(f"chatglm {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


def test_residual_scale_only_in_the_post_order():
    """Post: ``ln(alpha y + attn(y))`` and ``alpha y + mlp(y)``; pre: plain residuals, as the
    original's layer mixin had them."""
    x = torch.randn(1, 3, 32)
    kw_args = dict(layer_id=0, position_ids=torch.zeros(1, 2, 3, dtype=torch.long), output_this_layer={})
    for order in ("post", "pre"):
        model, _ = tiny(layernorm_order=order)
        layer = model.transformer.layers[0]
        with torch.no_grad():
            y = layer.input_layernorm(x)
            if order == "post":
                h = layer.post_attention_layernorm(2.0 * y + layer.attention(y, None, **kw_args))
                expected = 2.0 * h + layer.mlp(h, layer_id=0)
            else:
                h = x + layer.attention(y, None, **kw_args)
                expected = h + layer.mlp(layer.post_attention_layernorm(h), layer_id=0)
            assert (layer(x, None, **kw_args) - expected).abs().max() < 1e-5, order
