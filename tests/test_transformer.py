"""The backbone's options, checked against an independent computation where one exists."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import reference_forward

from sat.model import BaseMixin, BaseModel
from sat.model.build import get_meta_model
from sat.ops.attention import causal_attention_mask
from sat.ops.layernorm import RMSNorm
from sat.transformer_defaults import attention_fn_default, standard_attention

CAUSAL = torch.ones(10, 10).tril()

# Options the independent reference also implements: output must match it.
REFERENCE_OPTIONS = {
    "pre": {},
    "post": dict(layernorm_order="post"),
    "sandwich": dict(layernorm_order="sandwich"),
    "mqa": dict(num_multi_query_heads=1),
    "gqa": dict(num_multi_query_heads=2),
    "gated_mlp": dict(is_gated_mlp=True),
    "rotary": dict(is_rotary_emb=True),
    "rotary_base": dict(is_rotary_emb=True, rotary_base=500.0),
    "no_bias_qkv_bias": dict(use_bias=False, use_qkv_bias=True),
    "sizes": dict(inner_hidden_size=24, hidden_size_per_attention_head=16),
    "no_final_layernorm": dict(use_final_layernorm=False),
    "parallel_output": dict(parallel_output=True),
    "row_bias_inside": dict(row_parallel_linear_final_bias=False),
}


@pytest.mark.parametrize("name", list(REFERENCE_OPTIONS))
def test_option_matches_reference_and_trains(tiny_args, tokens, name):
    ids, pos = tokens
    model = BaseModel(tiny_args(**REFERENCE_OPTIONS[name]))
    model.eval()
    expected = reference_forward(model, ids, pos, CAUSAL)
    assert (model(ids, pos, -1)[0] - expected).abs().max() < 5e-6
    _check_backward(model, ids, pos)


def _check_backward(model, ids, pos, **kw):
    model.train()
    model.zero_grad()
    logits = model(ids, pos, -1, **kw)[0]
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_gated_mlp_without_autograd_gives_the_same_output(tiny_args, tokens):
    """Without autograd the gate's product is written in place; with it, out of place."""
    ids, pos = tokens
    model = BaseModel(tiny_args(is_gated_mlp=True), activation_func=F.silu).eval()
    with_autograd = model(ids, pos, -1)[0]
    assert with_autograd.requires_grad
    with torch.no_grad():
        assert torch.equal(model(ids, pos, -1)[0], with_autograd)
    model.requires_grad_(False)  # frozen: grad mode on, nothing to keep for backward
    assert torch.equal(model(ids, pos, -1)[0], with_autograd)
    with torch.inference_mode():
        assert torch.equal(model(ids, pos, -1)[0], with_autograd)


def test_rmsnorm_and_activation_kwargs(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(), layernorm=RMSNorm).eval()
    assert isinstance(model.transformer.final_layernorm, RMSNorm)
    assert (model(ids, pos, -1)[0] - reference_forward(model, ids, pos, CAUSAL)).abs().max() < 5e-6
    _check_backward(model, ids, pos)

    silu = BaseModel(tiny_args(), activation_func=F.silu).eval()
    silu.load_state_dict(model.state_dict(), strict=False)
    gelu = BaseModel(tiny_args()).eval()
    gelu.load_state_dict(silu.state_dict())
    assert (silu(ids, pos, -1)[0] - gelu(ids, pos, -1)[0]).abs().max() > 1e-4


def test_rmsnorm_formula():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(3, 8)
    expected = torch.arange(8.0) * x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    assert (norm(x) - expected).abs().max() < 1e-6


def test_partial_rotary_leaves_other_channels():
    from sat.model.position_embedding import RotaryEmbedding

    rope = RotaryEmbedding(4)
    q = torch.randn(1, 2, 5, 8)
    k = torch.randn(1, 2, 5, 8)
    q2, k2 = rope(q, k, torch.arange(5))
    assert torch.equal(q2[..., 4:], q[..., 4:]) and torch.equal(k2[..., 4:], k[..., 4:])
    assert torch.equal(q2[:, :, 0], q[:, :, 0])  # position 0 is not rotated
    # Rotation preserves the norm of every channel pair.
    pairs = lambda x: x[..., :2] ** 2 + x[..., 2:4] ** 2  # noqa: E731
    assert (pairs(q2) - pairs(q)).abs().max() < 1e-5


def test_rotary_cos_sin_computed_once_per_positions():
    from sat.model.position_embedding import RotaryEmbedding

    rope = RotaryEmbedding(8)
    positions = torch.arange(6).unsqueeze(0)
    first = rope.cos_sin(positions, torch.float32)
    assert rope.cos_sin(positions, torch.float32)[0] is first[0]  # the next layer reuses them
    positions.add_(1)  # changed in place: recomputed
    moved = rope.cos_sin(positions, torch.float32)
    assert torch.equal(moved[0], rope.cos_sin(torch.arange(1, 7).unsqueeze(0), torch.float32)[0])
    assert not torch.equal(moved[0], first[0])
    assert rope.cos_sin(positions, torch.bfloat16)[0].dtype == torch.bfloat16
    with torch.inference_mode():  # inference tensors keep no version counter: no reuse
        frozen = torch.arange(6)
        assert torch.equal(rope.cos_sin(frozen, torch.float32)[0], first[0])


def test_mixture_of_experts_default_routing_averages_experts(tiny_args, tokens):
    ids, pos = tokens
    moe = BaseModel(tiny_args(num_experts=3)).eval()
    hidden = torch.randn(2, 10, 32)
    mlp = moe.transformer.layers[0].mlp
    out = mlp(hidden, layer_id=0)
    experts = [
        getattr(mlp, f"dense_4h_to_h{s}")(mlp.activation_func(getattr(mlp, f"dense_h_to_4h{s}")(hidden)))
        for s in ("", "_1", "_2")
    ]
    assert (out - sum(experts) / 3).abs().max() < 1e-6
    assert torch.equal(moe(ids, pos, -1)[0], moe(ids, pos, -1)[0])  # deterministic
    _check_backward(moe, ids, pos)


def test_decoder_cross_attention_and_cached_kv(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(is_decoder=True, cross_attn_hidden_size=24)).eval()
    encoder_outputs = torch.randn(2, 7, 24)
    cross_mask = torch.ones(2, 1, 10, 7)
    cross_mask[1, ..., 5:] = 0
    logits = model(ids, pos, -1, encoder_outputs=encoder_outputs, cross_attention_mask=cross_mask)[0]

    # Cached (k, v) pairs per layer give the same result as the encoder outputs.
    cached = []
    for layer in model.transformer.layers:
        attn = layer.cross_attention
        k, v = attn.key_value(encoder_outputs).chunk(2, dim=-1)
        cached.append((attn._transpose_for_scores(k), attn._transpose_for_scores(v)))
    from_cache = model(ids, pos, -1, encoder_outputs=cached, cross_attention_mask=cross_mask)[0]
    assert (logits - from_cache).abs().max() < 1e-6

    # Masked encoder positions do not matter.
    changed = encoder_outputs.clone()
    changed[1, 5:] = 100.0
    other = model(ids, pos, -1, encoder_outputs=changed, cross_attention_mask=cross_mask)[0]
    assert (other[1] - logits[1]).abs().max() < 1e-5 and (other[0] - logits[0]).abs().max() < 1e-6
    _check_backward(model, ids, pos, encoder_outputs=encoder_outputs, cross_attention_mask=cross_mask)


def test_per_layer_decoder_list(tiny_args):
    model = BaseModel(tiny_args(is_decoder=[True, False]))
    assert hasattr(model.transformer.layers[0], "cross_attention")
    assert not hasattr(model.transformer.layers[1], "cross_attention")


def test_drop_path_is_per_sample_and_off_in_eval(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(drop_path=0.5, num_layers=4))
    plain = BaseModel(tiny_args(num_layers=4))
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    assert torch.equal(model(ids, pos, -1)[0], plain(ids, pos, -1)[0])
    model.train()
    outputs = torch.stack([model(ids, pos, -1)[0] for _ in range(8)])  # [8, b, s, v]
    assert outputs.std(0).amax() > 1e-3
    _check_backward(model, ids, pos)

    from sat.model.layers import drop_path

    branch = torch.randn(64, 5, 3)
    dropped = drop_path(branch, 0.25)
    kept = dropped.flatten(1).abs().sum(1) > 0  # a whole sample is either dropped or kept
    assert torch.allclose(dropped[kept], branch[kept] / 0.75)
    assert torch.equal(dropped[~kept], torch.zeros_like(branch[~kept]))
    assert 0 < (~kept).sum() < 64


def test_init_methods(tiny_args):
    torch.manual_seed(0)
    model = BaseModel(tiny_args(num_layers=8, hidden_size=256, num_attention_heads=8))
    t = model.transformer
    qkv = torch.cat([layer.attention.query_key_value.weight.flatten() for layer in t.layers])
    out = torch.cat([layer.mlp.dense_4h_to_h.weight.flatten() for layer in t.layers])
    assert abs(qkv.std().item() - 0.02) < 0.001
    assert abs(out.std().item() - 0.02 / math.sqrt(2 * 8)) < 0.0005
    assert torch.count_nonzero(t.layers[0].attention.query_key_value.bias) == 0
    assert torch.equal(t.layers[0].input_layernorm.weight, torch.ones(256))

    calls = []

    def custom(weight, module=None, name=None):
        calls.append((type(module).__name__, name))
        return torch.nn.init.constant_(weight, 0.5)

    model = BaseModel(tiny_args(), init_method=custom)
    assert ("SelfAttention", "query_key_value") in calls
    assert ("SelfAttention", "dense") in calls and ("MLP", "dense_4h_to_h") in calls
    assert torch.all(model.transformer.layers[1].mlp.dense_h_to_4h.weight == 0.5)


def test_meta_build_cannot_run_until_loaded(tiny_args, tokens):
    ids, pos = tokens
    source = BaseModel(tiny_args()).eval()
    model = get_meta_model(tiny_args(), BaseModel)
    assert all(p.is_meta for p in model.parameters())
    with pytest.raises(RuntimeError, match="built on meta and these weights were never loaded"):
        model(ids, pos, -1)
    model.load_state_dict(source.state_dict(), assign=True)
    assert torch.equal(model.eval()(ids, pos, -1)[0], source(ids, pos, -1)[0])


def test_output_hidden_states_are_each_layers_output(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(num_layers=3)).eval()
    logits, *per_layer = model(ids, pos, -1, output_hidden_states=True)
    from reference import layer_forward

    h = model.transformer.word_embeddings.weight[ids] + model.transformer.position_embeddings.weight[pos]
    for i, layer in enumerate(model.transformer.layers):
        with torch.no_grad():
            h = layer_forward(layer, model.transformer, h, pos, CAUSAL)
        assert (per_layer[i]["hidden_states"] - h).abs().max() < 5e-6


@pytest.mark.parametrize("chunk, skip", [(1, 0), (2, 0), (1, 2), (3, 1)])
def test_activation_checkpointing_matches_plain(tiny_args, tokens, chunk, skip):
    ids, pos = tokens

    class Counter(BaseMixin):
        @BaseMixin.non_conflict
        def layer_forward(self, hidden_states, mask, *args, old_impl=None, **kw_args):
            assert type(kw_args["layer_id"]) is int
            scale = kw_args.get("scale", torch.tensor(1.0))
            kw_args["output_this_layer"]["scale"] = scale
            kw_args["output_cross_layer"]["scale"] = scale * 2
            return old_impl(hidden_states * scale, mask, *args, **kw_args)

    def build(checkpoint):
        model = BaseModel(
            tiny_args(
                num_layers=4,
                checkpoint_activations=checkpoint,
                checkpoint_num_layers=chunk,
                checkpoint_skip_layers=skip,
                hidden_dropout=0.1,
            )
        )
        model.add_mixin("counter", Counter())
        return model

    plain, ckpt = build(False), build(True)
    ckpt.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(7)  # same dropout masks
        logits, *per_layer = model(ids, pos, -1, output_hidden_states=True)
        logits.square().mean().backward()
        results.append((logits, per_layer, {n: p.grad for n, p in model.named_parameters()}))
    (l1, o1, g1), (l2, o2, g2) = results
    assert torch.equal(l1, l2)
    assert [o["scale"].item() for o in o2] == [1.0, 2.0, 4.0, 8.0]
    assert all(torch.equal(a["hidden_states"], b["hidden_states"]) for a, b in zip(o1, o2))
    assert max((g1[n] - g2[n]).abs().max().item() for n in g1) < 1e-7


# --------------------------------------------------------------------------- attention kernels
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_sdpa_path_equals_eager_path(kv_heads):
    q = torch.randn(2, 4, 6, 8)
    k = torch.randn(2, kv_heads, 6, 8)
    v = torch.randn(2, kv_heads, 6, 8)
    expand = lambda x: x.repeat_interleave(4 // kv_heads, dim=1)  # noqa: E731
    tagged = causal_attention_mask(6, torch.float32, torch.device("cpu"))
    plain = torch.ones(6, 6).tril()
    sdpa = attention_fn_default(q, k, v, tagged)
    eager = attention_fn_default(q, k, v, plain)
    assert (sdpa - eager).abs().max() < 1e-6
    assert (eager - standard_attention(q, expand(k), expand(v), plain)).abs().max() < 1e-6
    full = attention_fn_default(q, k, v, None)
    assert (full - standard_attention(q, expand(k), expand(v), torch.ones(1, 1))).abs().max() < 1e-6
    unscaled = attention_fn_default(q, k, v, tagged, scaling_attention_score=False)
    expected = standard_attention(q, expand(k), expand(v), plain, scaling_attention_score=False)
    assert (unscaled - expected).abs().max() < 1e-5


def test_kernel_choice_does_not_read_mask_values():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    tagged = causal_attention_mask(5, torch.float32, torch.device("cpu"))
    expected = attention_fn_default(q, k, v, tagged)
    tagged.zero_()  # a tagged mask is trusted by its tag: SDPA never looks at the values
    assert torch.equal(attention_fn_default(q, k, v, tagged), expected)


def test_causal_with_more_keys_than_queries_aligns_to_the_end():
    q = torch.randn(1, 2, 3, 4)
    k = torch.randn(1, 2, 7, 4)
    v = torch.randn(1, 2, 7, 4)
    from sat.ops.attention import sdpa_attention

    mask = torch.ones(3, 7).tril(4)  # query i sees keys up to 4 + i
    assert (sdpa_attention(q, k, v, "causal") - standard_attention(q, k, v, mask)).abs().max() < 1e-6


def test_sdpa_runs_the_fused_kernel_for_a_query_without_unit_last_stride():
    from torch.profiler import profile

    from sat.ops.attention import sdpa_attention

    # The layout rotary produces at one decoding position with batch 8: batch is innermost.
    q = torch.randn(4, 1, 64, 8).permute(3, 0, 1, 2)  # [8, 4, 1, 64], strides (1, 512, 2048, 8)
    k, v = torch.randn(2, 8, 2, 9, 64).unbind(0)
    with profile() as prof:
        out = sdpa_attention(q, k, v, "causal")
    kernels = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    expected = standard_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), torch.ones(1, 9))
    assert (out - expected).abs().max() < 1e-6


def test_model_sdpa_equals_eager_in_training_mode(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(num_multi_query_heads=2)).train()
    sdpa = model(ids, pos, -1)[0]
    eager = model(ids, pos, CAUSAL)[0]
    assert (sdpa - eager).abs().max() < 2e-6


# --------------------------------------------------------------------------- input validation
def test_bad_inputs_raise_clear_errors(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args())
    with pytest.raises(ValueError, match="input_ids must be at least 2-D"):
        model(ids[0], pos[0], -1)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[sq, sk\] or \[b, 1, sq, sk\]"):
        model(ids, pos, torch.ones(2, 10, 10))
    with pytest.raises(ValueError, match="attention_mask must be None, -1"):
        model(ids, pos, 3)
    with pytest.raises(ValueError, match=r"needs args.num_layers"):
        BaseModel(type("Args", (), {})())
    with pytest.raises(ValueError, match="multiple of num_multi_query_heads"):
        BaseModel(tiny_args(num_multi_query_heads=3))
    with pytest.raises(ValueError, match="layernorm_order must be"):
        BaseModel(tiny_args(layernorm_order="middle"))
