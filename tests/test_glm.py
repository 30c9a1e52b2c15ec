"""GLMModel: 2-D (absolute + block) position embeddings; no transformers counterpart."""

from __future__ import annotations

import functools
import os
import sys

import torch
import torch.nn.functional as F
from model_checks import check_sat_model

from sat.generation import BaseStrategy, filling_sequence
from sat.model import AutoModel, BaseMixin
from sat.model.build import get_meta_model
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin, KVCache
from sat.model.official import GLMModel
from sat.model.official.glm_model import get_masks_and_position_ids_glm

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_llama_glm_fixtures import CONTEXT, glm_inputs, glm_logits  # noqa: E402


def tiny_glm() -> tuple[GLMModel, object]:
    args = GLMModel.get_args(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=100,
        max_sequence_length=16,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return GLMModel(args), args


def forward(model):
    input_ids, position_ids, mask = glm_inputs()
    return model(input_ids, position_ids, mask)[0]


class RecordLayerInput(BaseMixin):
    """Keeps what the first layer receives: the summed embeddings."""

    @BaseMixin.non_conflict
    def layer_forward(self, hidden_states, mask, *args, old_impl=None, **kw_args):
        if kw_args["layer_id"] == 0:
            self.recorded = hidden_states
        return old_impl(hidden_states, mask, *args, **kw_args)


def test_embeddings_are_the_sum_of_word_position_and_block_position():
    model, _ = tiny_glm()
    model.eval()
    model.add_mixin("record", RecordLayerInput())
    input_ids, position_ids, mask = glm_inputs()
    with torch.no_grad():
        outputs = model(input_ids, position_ids, mask, output_hidden_states=True)
    word = model.transformer.word_embeddings.weight
    position = model.transformer.position_embeddings.weight
    block = model.get_mixin("block_position_embedding").block_position_embeddings.weight
    expected = word[input_ids] + position[position_ids[:, 0]] + block[position_ids[:, 1]]  # [b, s, h]
    assert torch.allclose(model.get_mixin("record").recorded, expected, atol=1e-7)
    # The default, tied head: the final norm of the last layer, projected on the word embeddings.
    last = outputs[-1]["hidden_states"]
    logits = F.linear(model.transformer.final_layernorm(last), word)
    assert torch.allclose(outputs[0], logits, atol=1e-6)


def test_block_positions_change_the_output():
    model, _ = tiny_glm()
    model.eval()
    input_ids, position_ids, mask = glm_inputs()
    flat = position_ids.clone()
    flat[:, 1] = 0
    with torch.no_grad():
        assert not torch.allclose(model(input_ids, position_ids, mask)[0], model(input_ids, flat, mask)[0])


def test_cached_blank_filling_equals_full_forward():
    """Decoding the blank token by token with the KV cache gives the logits of one pass with
    GLM's mask (bidirectional context, causal blank)."""
    model, _ = tiny_glm()
    model.eval()
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    input_ids, position_ids, mask = glm_inputs()
    cache = KVCache(num_layers=2)
    with torch.no_grad():
        full = model(input_ids, position_ids, mask)[0]
        outputs = [model(input_ids[:, :CONTEXT], position_ids[:, :, :CONTEXT], None, mems=cache)[0]]
        for i in range(CONTEXT, input_ids.shape[1]):  # each new token sees everything cached
            outputs.append(model(input_ids[:, i : i + 1], position_ids[:, :, i : i + 1], None, mems=cache)[0])
    assert (torch.cat(outputs, dim=1) - full).abs().max() < 1e-5


def test_cached_greedy_blank_filling_equals_uncached_loop():
    """``filling_sequence`` with GLM's 2-D positions and mask: 64 cached greedy tokens equal a
    loop of full forwards over the whole sequence."""
    torch.manual_seed(0)
    args = GLMModel.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, max_sequence_length=128
    )
    model = GLMModel(args).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(6.0)  # a sharper random model, so the greedy choices vary
    mask_token, start_token, mask_position = 90, 91, 5
    context = torch.tensor([1, 12, 33, 47, 8, mask_token, 21, 64, 2])  # the blank at position 5
    seq = torch.cat((context, torch.tensor([start_token]), torch.full((64,), -1)))
    builder = functools.partial(
        get_masks_and_position_ids_glm, mask_position=mask_position, context_length=len(context)
    )

    expected = seq[: len(context) + 1][None]
    with torch.no_grad():
        while expected.shape[1] < len(seq):
            tokens, mask, positions = builder(torch.cat((expected[0], seq[expected.shape[1] :])))
            length = expected.shape[1]
            logits = model(expected, positions[..., :length], mask[..., :length, :length])[0][:, -1]
            expected = torch.cat((expected, logits.argmax(-1, keepdim=True)), dim=1)

    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    tokens, _ = filling_sequence(model, seq, 1, BaseStrategy(top_k=1), get_masks_and_position_ids=builder)
    assert torch.equal(tokens, expected)
    assert len(set(tokens[0, len(context) + 1 :].tolist())) > 5  # a varied continuation


def test_arguments_and_mixins():
    model, args = tiny_glm()
    assert list(model.mixins) == ["block_position_embedding"]
    assert model.get_mixin("block_position_embedding").block_position_embeddings.weight.shape == (16, 32)
    assert (args.bert_prob, args.gpt_infill_prob, args.gap_sentence_ratio, args.avg_block_length) == (0.5, 0.5, 0.15, 3)
    assert not (args.block_lm or args.task_mask or args.no_block_position) and args.tokenizer_model_type is None


def test_sat_model_trains_saves_and_reloads(tmp_path):
    model, args = tiny_glm()
    check_sat_model(model, args, forward, tmp_path)


def test_meta_build_puts_mixin_weights_on_meta():
    _, args = tiny_glm()
    model = get_meta_model(args, GLMModel)
    assert model.get_mixin("block_position_embedding").block_position_embeddings.weight.is_meta


def test_checkpoint_written_by_original_loads_with_identical_logits():
    folder = os.path.join(FIXTURES, "written_by_original", "glm")
    model, _ = AutoModel.from_pretrained(folder)
    assert isinstance(model, GLMModel)
    recorded = torch.load(os.path.join(folder, "logits_by_original.pt"), weights_only=True)
    assert (glm_logits(model)["glm"] - recorded["glm"]).abs().max() < 1e-6
