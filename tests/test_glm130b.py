"""GLM130B: transformers has no native class, so correctness is against the original
SwissArmyTransformer 0.4.12.

Reference outputs: ``tests/fixtures/original_sat/make_chatglm_glm130b_fixtures.py`` built tiny
GLM130Bs (1-D and 2-D rotary) with the original and recorded their logits under a causal and a
blank-filling mask, and the blank decoded with the original's ``mems``. The original's GLM130B ran
only on CUDA in fp16; the script ran it on CPU in fp32 with three patches that leave its
computation alone (``torch.cuda.current_device`` -> ``"cpu"``, ``Tensor.half`` a no-op, a float
mask read as bool by ``masked_fill_``) and drew its uninitialised GEGLU weights from a seeded
normal; the docstring there says why each is needed. The original also loaded a checkpoint
written here and recorded the same outputs.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest
import torch
from finetune_cases import IDS, tiny_model
from lm_checks import check_batched_prompts, check_finetuning_reduces_the_loss, to_fill, uncached_greedy, with_cache
from model_checks import assert_recorded, check_sat_model, check_written_here_loads_in_original

from sat.generation import BaseStrategy, filling_sequence
from sat.model import AutoModel, get_model_class
from sat.model.official import GLM130B
from sat.model.official.glm130B_model import GEGLU
from sat.model.official.glm_model import get_masks_and_position_ids_glm

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_chatglm_glm130b_fixtures import glm130b_outputs  # noqa: E402

PROMPT = torch.tensor([11, 25, 37, 48, 52, 60, 7])
NEW_TOKENS = 32


def tiny(seed: int = 0, **overrides):
    """A 2-layer, hidden-32 GLM-130B (GEGLU inner 48) with vocabulary 96, weights sharpened; the
    layers' 4x more, or the alpha-scaled residual keeps the input token on top of the tied head
    and greedy decoding repeats it."""
    model, args = tiny_model(GLM130B, {"inner_hidden_size": 48, **overrides}, seed)
    with torch.no_grad():
        for param in model.transformer.layers.parameters():
            if param.dim() > 1:
                param.mul_(4.0)
    return model, args


@pytest.mark.parametrize("name, two_d", [("glm130b", False), ("glm130b_2d", True)])
def test_checkpoint_written_by_original_loads_with_identical_outputs(name, two_d):
    folder = os.path.join(FIXTURES, "written_by_original", name)
    model, _ = AutoModel.from_pretrained(folder)
    assert isinstance(model, GLM130B) and model.get_mixin("rotary-embedding").position_encoding_2d == two_d
    outputs = glm130b_outputs(with_cache(model), two_d)  # its mems need the cache mixin here
    assert_recorded(outputs, os.path.join(folder, "logits_by_original.pt"))


def test_checkpoint_written_here_loads_in_original(tmp_path):
    folder = os.path.join(FIXTURES, "written_by_ours", "glm130b")
    check_written_here_loads_in_original(folder, lambda model: glm130b_outputs(with_cache(model)), tmp_path)


def test_structure_names_and_arguments():
    import sat.model  # the original imported the zoo from here

    assert sat.model.GLM130B is GLM130B and get_model_class("GLM130B") is GLM130B
    model, args = tiny()
    assert list(model.mixins) == [
        "glu-deepnorm",
        "fp32-softmax",
        "final-forward",
        "non-position-embedding",
        "word-embedding",
        "rotary-embedding",
    ]
    assert not (args.position_encoding_2d or args.no_glu)
    mlp = model.transformer.layers[0].mlp
    assert mlp.dense_h_to_4h.weight.shape == (96, 32) and mlp.dense_4h_to_h.weight.shape == (32, 48)
    assert isinstance(mlp.activation_func, GEGLU)
    t = model.transformer
    assert (t.layernorm_order, t.residual_scale) == ("post", 2.0)  # DeepNorm: alpha = sqrt(2 * 2)
    assert not hasattr(t, "position_embeddings")
    assert model.get_mixin("rotary-embedding").rotary_emb.inv_freq.shape == (4,)  # a head of 8

    plain, _ = tiny(no_glu=True, inner_hidden_size=None)
    assert plain.transformer.layers[0].mlp.dense_h_to_4h.weight.shape == (128, 32)
    default, _ = tiny(inner_hidden_size=None)  # the original's default GLU width: 4 h * 2 / 3
    assert default.transformer.layers[0].mlp.dense_4h_to_h.weight.shape == (32, 85)


def test_geglu_is_the_first_half_times_gelu_of_the_second():
    x = torch.randn(3, 8)
    assert torch.equal(GEGLU()(x), x[:, :4] * torch.nn.functional.gelu(x[:, 4:]))


def test_bool_mask_is_the_originals_convention():
    """True = masked out, as the original GLM130B read masks; a float mask is sat's 1 = attend."""
    model, _ = tiny()
    model.eval()
    positions = torch.arange(12).expand(2, 12)
    causal = torch.ones(12, 12).tril()
    with torch.no_grad():
        expected = model(IDS, positions, -1)[0]
        assert (model(IDS, positions, causal < 0.5)[0] - expected).abs().max() < 1e-6
        assert (model(IDS, positions, causal)[0] - expected).abs().max() < 1e-6
        # A one-query bool mask masking every key: the original skipped it (its decoding step).
        last = model(IDS, positions, torch.ones(1, 12, dtype=torch.bool))[0][:, -1]
        assert (last - model(IDS, positions, None)[0][:, -1]).abs().max() < 1e-6


def test_mems_need_the_cache_mixin():
    model, _ = tiny()
    with pytest.raises(ValueError, match="CachedAutoregressiveMixin"):
        model(IDS, torch.arange(12).expand(2, 12), -1, mems=torch.zeros(2, 2, 0, 64))


def test_cached_greedy_equals_uncached():
    model, _ = tiny()
    model.eval()
    uncached = uncached_greedy(model, PROMPT, NEW_TOKENS)
    cached, _ = filling_sequence(with_cache(model), to_fill(PROMPT, NEW_TOKENS), 1, BaseStrategy(top_k=1))
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, len(PROMPT) :].tolist())) > 5  # a varied continuation


def test_cached_greedy_blank_filling_with_2d_rotary_equals_uncached():
    model, _ = tiny(position_encoding_2d=True)
    model.eval()
    context, mask_position = len(PROMPT), 3
    builder = functools.partial(get_masks_and_position_ids_glm, mask_position=mask_position, context_length=context)
    seq = to_fill(torch.cat((PROMPT, torch.tensor([90]))), NEW_TOKENS)  # 90: the start of the blank
    expected = seq[: context + 1][None]
    with torch.no_grad():
        while expected.shape[1] < len(seq):
            _, mask, positions = builder(seq)
            length = expected.shape[1]
            logits = model(expected, positions[..., :length], mask[..., :length, :length])[0][:, -1]
            expected = torch.cat((expected, logits.argmax(-1, keepdim=True)), dim=1)
    tokens, _ = filling_sequence(with_cache(model), seq, 1, BaseStrategy(top_k=1), get_masks_and_position_ids=builder)
    assert torch.equal(tokens, expected)
    assert len(set(tokens[0, context + 1 :].tolist())) > 5


def test_batched_prompts():
    model, _ = tiny()
    model.eval()
    check_batched_prompts(model, [PROMPT.tolist(), [5, 9, 14], [70, 71, 72, 73, 74]], 10)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    model, args = tiny()
    check_sat_model(model, args, lambda model: model(IDS, torch.arange(12).expand(2, 12), -1)[0], tmp_path)


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_finetuning_reduces_the_loss(name):
    model, _ = tiny()
    losses = check_finetuning_reduces_the_loss(model, name, family="glm130b")
    print(f"glm130b {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
