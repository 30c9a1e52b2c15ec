"""The glm and glm4 families of sat.hf: transformers' GlmForCausalLM and Glm4ForCausalLM
(tiny random models: GQA/MQA, q/k/v biases, sandwich norms for GLM-4-0414) <-> ChatGLM4Model."""

from __future__ import annotations

import pytest
import torch
from finetune_cases import VOCAB
from lm_checks import check_batched_prompts, check_greedy_generation
from model_checks import check_hf_round_trip, check_left_padded_batch, check_unmatched_keys
from transformers import Glm4Config, Glm4ForCausalLM, GlmConfig, GlmForCausalLM, GlmModel

from sat.hf import from_hf, to_hf
from sat.hf.families.glm import rope_order
from sat.model import AutoModel
from sat.model.official.chatglm4_model import ChatGLM4Model

SEQ = 12
IDS = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(SEQ).expand(2, SEQ)
CLASSES = {"glm": (GlmConfig, GlmForCausalLM), "glm4": (Glm4Config, Glm4ForCausalLM)}


def tiny_hf(kind: str = "glm", seed: int = 0, scale: float = 3.0, **overrides):
    """A random tiny GLM (``kind`` glm or glm4), weights sharpened by ``scale``, random q/k/v
    biases (transformers initialises them to zero) and norm weights."""
    config_cls, model_cls = CLASSES[kind]
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=[1, 2],
    )
    torch.manual_seed(seed)
    hf = model_cls(config_cls(**{**values, **overrides})).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.3)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.mul_(scale)
    return hf


def sat_logits(model):
    return model(IDS, POSITIONS, -1)[0]


def hf_logits(hf):
    return hf(IDS).logits


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("glm", {}),  # GQA, q/k/v biases
        ("glm4", {}),  # the same with GLM-4-0414's sandwich norms
        ("glm", {"num_key_value_heads": 1, "head_dim": 16, "rope_parameters": {"rope_theta": 500.0}}),  # MQA, wide
        ("glm4", {"num_key_value_heads": 4, "attention_bias": False, "tie_word_embeddings": True}),  # MHA, tied
    ],
    ids=["glm-gqa", "glm4-gqa", "glm-mqa-hd16-theta", "glm4-mha-nobias-tied"],
)
def test_parity_with_transformers(kind, overrides, tmp_path):
    assert check_hf_round_trip(tiny_hf(kind, **overrides), sat_logits, hf_logits, tmp_path, atol=1e-5) <= 1e-5


@pytest.mark.parametrize("kind, order", [("glm", "pre"), ("glm4", "sandwich")])
def test_translated_configuration(kind, order):
    hf = tiny_hf(kind, rope_parameters={"rope_theta": 500.0})
    model, args = from_hf(hf)
    t = model.transformer
    assert type(model) is ChatGLM4Model and list(model.mixins) == ["chatglm-final", "attn"]
    assert (t.layernorm_order, t.is_gated_mlp, t.use_qkv_bias, t.use_bias) == (order, True, True, False)
    assert (t.num_multi_query_heads, t.rotary_base, t.inner_hidden_size) == (2, 500.0, 48)
    assert (args.pad_token_id, args.eos_token_id, args.bos_token_id) == (0, [1, 2], None)
    rotary = model.get_mixin("attn").rotary_pos_emb
    assert (rotary.dim, rotary.interleaved) == (4, False)  # half of hn 8, in halves
    config = to_hf(model).config
    assert config.architectures == [CLASSES[kind][1].__name__] and config.eos_token_id == [1, 2]
    assert config.rope_parameters["rope_theta"] == 500.0 and config.rope_parameters["partial_rotary_factor"] == 0.5


def test_query_rows_move_from_pairs_to_halves():
    hf = tiny_hf()
    model, _ = from_hf(hf)
    assert rope_order(8, 4).tolist() == [0, 2, 1, 3, 4, 5, 6, 7]
    query = hf.model.layers[0].self_attn.q_proj.weight  # [4 heads * 8, 32]
    fused = model.transformer.layers[0].attention.query_key_value.weight
    assert torch.equal(fused[8 + 1], query[8 + 2]) and torch.equal(fused[8 + 5], query[8 + 5])  # head 1


def test_left_padded_batch_matches_transformers():
    assert check_left_padded_batch(tiny_hf("glm4"), IDS) <= 1e-5


@pytest.fixture(scope="module", params=["glm", "glm4"])
def generating_pair(request):
    hf = tiny_hf(request.param, seed=7, scale=10.0)  # a varied greedy continuation for both
    return hf, from_hf(hf)[0]


def test_cached_greedy_equals_uncached_and_transformers(generating_pair):
    hf, model = generating_pair
    tokens = check_greedy_generation(hf, model, torch.tensor([3, 17, 42, 90, 7, 61]), 32)
    assert tokens.shape == (1, 38)


def test_batched_prompts_equal_per_prompt_generation():
    model, _ = from_hf(tiny_hf("glm4", seed=7, scale=10.0))
    check_batched_prompts(model, [[3, 17, 42], [9, 8, 7, 6, 4, 3, 2], [11]], 12)


def test_unmatched_and_missing_keys():
    check_unmatched_keys(tiny_hf(), "model.layers.0.self_attn.q_norm.weight", "model.layers.1.mlp.gate_up_proj.weight")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear' is not supported"),
        ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 1.0}}, "partial_rotary_factor=1.0 is not"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"head_dim": 6}, "head_dim=6 is not supported"),
    ],
)
def test_unsupported_configs(overrides, message):
    config = GlmConfig(**{**tiny_hf().config.to_dict(), **overrides})
    with pytest.raises(ValueError, match=message):
        from_hf(GlmForCausalLM(config))


def test_unsupported_models():
    with pytest.raises(ValueError, match="GLM as GlmModel is not supported"):
        from_hf(GlmModel(tiny_hf().config))
    args = ChatGLM4Model.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="gate in the 'mlp' mixin"):
        to_hf(ChatGLM4Model(args))  # the original's layout, without is_gated_mlp


def test_tied_directory_without_lm_head_loads(tmp_path):
    hf = tiny_hf("glm4", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)  # the tied head is not saved
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    head = model.get_mixin("chatglm-final").lm_head.weight
    assert torch.equal(head, model.transformer.word_embeddings.weight)
    assert head.data_ptr() != model.transformer.word_embeddings.weight.data_ptr()  # equal, not aliased
    with torch.no_grad():
        assert (sat_logits(model) - hf_logits(hf)).abs().max() < 1e-5
