"""The hook system: defaults, overrides, composition rules, errors and introspection."""

from __future__ import annotations

import pytest
import torch
from reference import reference_forward

from sat.model import BaseMixin, BaseModel
from sat.model.hooks import HookError
from sat.transformer_defaults import HOOK_SPECS, HOOKS_DEFAULT, standard_attention

CAUSAL = torch.ones(10, 10).tril()


def test_registry_lists_the_nine_hooks_in_order():
    assert list(HOOKS_DEFAULT) == [
        "attention_fn",
        "attention_forward",
        "cross_attention_forward",
        "routing_forward",
        "mlp_forward",
        "word_embedding_forward",
        "position_embedding_forward",
        "final_forward",
        "layer_forward",
    ]
    assert HOOK_SPECS["attention_fn"].signature == (
        "attention_fn(query_layer, key_layer, value_layer, attention_mask, attention_dropout, layer_id=..., "
        "position_ids=..., output_this_layer=..., output_cross_layer=..., **kw_args)"
    )
    for spec in HOOK_SPECS.values():
        assert spec.default.__doc__, f"{spec.name}'s default has no docstring"


def test_defaults_match_independent_computation(tiny_args, tokens):
    model = BaseModel(tiny_args()).eval()
    ids, pos = tokens
    expected = reference_forward(model, ids, pos, CAUSAL)
    assert (model(ids, pos, -1)[0] - expected).abs().max() < 2e-6
    assert (model(ids, pos, None)[0] - reference_forward(model, ids, pos, None)).abs().max() < 2e-6


class ZeroContext(BaseMixin):
    def attention_fn(self, q, k, v, mask, dropout_fn, **kw_args):
        return torch.zeros_like(q)


class ZeroAttention(BaseMixin):
    def attention_forward(self, hidden_states, mask, **kw_args):
        return torch.zeros_like(hidden_states)


class ZeroMLP(BaseMixin):
    def mlp_forward(self, hidden_states, **kw_args):
        return torch.zeros_like(hidden_states)


class ZeroTokens(BaseMixin):
    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        return self.transformer.word_embeddings(input_ids) * 0


class NoPositions(BaseMixin):
    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None


class HiddenOut(BaseMixin):
    def final_forward(self, logits, **kw_args):
        return logits


class SkipLayers(BaseMixin):
    def layer_forward(self, hidden_states, mask, *args, **kw_args):
        return hidden_states


@pytest.mark.parametrize(
    "mixin, knob",
    [
        (ZeroContext, "zero_context"),
        (ZeroAttention, "zero_attention"),
        (ZeroMLP, "zero_mlp"),
        (ZeroTokens, "zero_tokens"),
        (NoPositions, "drop_positions"),
        (HiddenOut, "hidden_only"),
        (SkipLayers, "skip_layers"),
    ],
)
def test_override_changes_output_exactly_as_expected(tiny_args, tokens, mixin, knob):
    model = BaseModel(tiny_args()).eval()
    ids, pos = tokens
    before = model(ids, pos, -1)[0]
    model.add_mixin("override", mixin())
    after = model(ids, pos, -1)[0]
    expected = reference_forward(model, ids, pos, CAUSAL, **{knob: True})
    assert after.shape == expected.shape
    assert (after - expected).abs().max() < 2e-6
    assert before.shape != after.shape or (before - after).abs().max() > 1e-3


def test_routing_override_selects_expert(tiny_args, tokens):
    ids, pos = tokens
    moe = BaseModel(tiny_args(num_experts=3)).eval()

    class OnlyExpertTwo(BaseMixin):
        def routing_forward(self, hidden_states, **kw_args):
            tokens = hidden_states.shape[0] * hidden_states.shape[1]
            return hidden_states.new_ones(tokens, 1), torch.full((tokens, 1), 2, dtype=torch.long)

    moe.add_mixin("router", OnlyExpertTwo())
    dense = BaseModel(tiny_args()).eval()
    state = {k: v for k, v in moe.state_dict().items() if not k.split(".")[-2].endswith(("_1", "_2"))}
    for layer in range(2):  # expert 2's weights become the dense model's MLP
        for name in ("dense_h_to_4h", "dense_4h_to_h"):
            for kind in ("weight", "bias"):
                state[f"transformer.layers.{layer}.mlp.{name}.{kind}"] = moe.state_dict()[
                    f"transformer.layers.{layer}.mlp.{name}_2.{kind}"
                ]
    dense.load_state_dict(state)
    assert (moe(ids, pos, -1)[0] - dense(ids, pos, -1)[0]).abs().max() < 1e-6


def test_cross_attention_override(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args(is_decoder=True)).eval()
    encoder_outputs = torch.randn(2, 7, 32)
    with_cross = model(ids, pos, -1, encoder_outputs=encoder_outputs, cross_attention_mask=None)[0]
    without_cross = model(ids, pos, -1, encoder_outputs=None)[0]
    assert (with_cross - without_cross).abs().max() > 1e-3

    class NoCross(BaseMixin):
        def cross_attention_forward(self, hidden_states, cross_attention_mask, encoder_outputs, **kw_args):
            return torch.zeros_like(hidden_states)

    model.add_mixin("nocross", NoCross())
    # A zero cross-attention branch only leaves its layer norm's effect out: same as no encoder.
    out = model(ids, pos, -1, encoder_outputs=encoder_outputs, cross_attention_mask=None)[0]
    assert (out - without_cross).abs().max() < 1e-6


# --------------------------------------------------------------------------- composition rules
class Scale(BaseMixin):
    """A non_conflict attention_fn: scales q by a factor, then calls the previous hook."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    @BaseMixin.non_conflict
    def attention_fn(self, q, k, v, mask, dropout_fn, old_impl=standard_attention, **kw_args):
        return old_impl(q * self.factor, k, v, mask, dropout_fn, **kw_args)


def test_non_conflict_chain_composes_and_records_origins(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args()).eval()
    model.add_mixin("twice", Scale(2.0))
    model.add_mixin("thrice", Scale(3.0))
    reference = BaseModel(tiny_args()).eval()
    reference.load_state_dict(model.state_dict())
    reference.add_mixin("six", Scale(6.0))
    assert (model(ids, pos, -1)[0] - reference(ids, pos, -1)[0]).abs().max() < 1e-6
    assert model.hook_origins["attention_fn"] == "thrice -> twice -> default"
    summary = model.describe_hooks()
    assert "attention_fn" in summary and "thrice (Scale.attention_fn, wraps) -> twice" in summary
    assert "final_forward               default" in summary


def test_conflict_names_both_sides_and_leaves_model_unchanged(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args()).eval()
    model.add_mixin("first", ZeroMLP())
    before = model(ids, pos, -1)[0]

    class OtherMLP(BaseMixin):
        def mlp_forward(self, hidden_states, **kw_args):
            return hidden_states

    with pytest.raises(HookError, match=r"mlp_forward conflicts at mixin 'second' \(OtherMLP\) and first"):
        model.add_mixin("second", OtherMLP())
    assert list(model.mixins) == ["first"]
    assert torch.equal(model(ids, pos, -1)[0], before)


def test_replacable_hook_is_replaced_with_warning(tiny_args, tokens):
    ids, pos = tokens

    class Identity(BaseMixin):
        @BaseMixin.replacable
        def mlp_forward(self, hidden_states, **kw_args):
            return hidden_states

    model = BaseModel(tiny_args()).eval()
    model.add_mixin("soft", Identity())
    with pytest.warns(UserWarning, match="mlp_forward at mixin 'hard' .* replaces soft"):
        model.add_mixin("hard", ZeroMLP())
    assert model.hook_origins["mlp_forward"] == "hard"
    expected = reference_forward(model, ids, pos, CAUSAL, zero_mlp=True)
    assert (model(ids, pos, -1)[0] - expected).abs().max() < 2e-6


def test_model_level_hook_acts_before_mixins(tiny_args, tokens):
    ids, pos = tokens

    class HiddenModel(BaseModel):
        def final_forward(self, logits, **kw_args):
            return logits

    model = HiddenModel(tiny_args()).eval()
    assert model.hook_origins["final_forward"] == "model"
    with pytest.raises(HookError, match="final_forward conflicts at mixin 'head'"):
        model.add_mixin("head", HiddenOut())

    class PlusOne(BaseMixin):
        @BaseMixin.non_conflict
        def final_forward(self, logits, old_impl=None, **kw_args):
            return old_impl(logits, **kw_args) + 1

    model.add_mixin("plus", PlusOne())
    assert model.hook_origins["final_forward"] == "plus -> model"
    expected = reference_forward(model, ids, pos, CAUSAL, hidden_only=True) + 1
    assert (model(ids, pos, -1)[0] - expected).abs().max() < 2e-6


def test_del_mixin_restores_original_outputs_exactly(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args()).eval()
    before = model(ids, pos, -1)[0]
    model.add_mixin("scale", Scale(5.0))
    assert (model(ids, pos, -1)[0] - before).abs().max() > 1e-3
    removed = model.del_mixin("scale")
    assert isinstance(removed, Scale)
    assert torch.equal(model(ids, pos, -1)[0], before)
    assert model.hook_origins == {}
    with pytest.raises(KeyError, match="no mixin named 'scale'"):
        model.del_mixin("scale")


def test_add_mixin_rejects_duplicates_and_non_mixins(tiny_args):
    model = BaseModel(tiny_args())
    model.add_mixin("a", Scale(1.0))
    with pytest.raises(ValueError, match="a mixin named 'a' already exists"):
        model.add_mixin("a", Scale(1.0))
    with pytest.raises(TypeError, match="expects a BaseMixin, got Linear"):
        model.add_mixin("b", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'float' is taken by a torch.nn.ModuleDict attribute"):
        model.add_mixin("float", Scale(1.0))
    assert model.get_mixin("a").factor == 1.0


def test_reinit_on_add_and_by_name(tiny_args):
    calls = []

    class Recorder(BaseMixin):
        def reinit(self, parent_model=None):
            calls.append(parent_model)

    model = BaseModel(tiny_args())
    model.add_mixin("r1", Recorder(), reinit=True)
    model.add_mixin("r2", Recorder())
    assert calls == [model]
    model.reinit(["r2"])
    assert calls == [model, model]
    model.reinit()
    assert len(calls) == 4


# --------------------------------------------------------------------------- signature checks
def test_hook_without_self_is_rejected_at_add_mixin(tiny_args):
    class ReadmeBug(BaseMixin):
        # The original README's signature: no self, so q is bound to the mixin.
        def attention_fn(q, k, v, mask, dropout=None, **kwargs):  # noqa: N805
            return q

    model = BaseModel(tiny_args())
    with pytest.raises(HookError, match=r"attention_fn at mixin 'bug' \(ReadmeBug\): it takes 4 positional"):
        model.add_mixin("bug", ReadmeBug())
    assert "bug" not in model.mixins


def test_non_conflict_without_old_impl_is_rejected(tiny_args):
    class NoOldImpl(BaseMixin):
        @BaseMixin.non_conflict
        def attention_fn(self, q, k, v, mask, dropout_fn, **kw_args):
            return q

    with pytest.raises(HookError, match="marked @non_conflict but has no `old_impl`"):
        BaseModel(tiny_args()).add_mixin("x", NoOldImpl())


def test_hook_missing_required_keyword_is_rejected(tiny_args):
    class NoKwargs(BaseMixin):
        def word_embedding_forward(self, input_ids):
            return input_ids

    with pytest.raises(HookError, match="does not accept the keyword 'output_cross_layer'"):
        BaseModel(tiny_args()).add_mixin("x", NoKwargs())


def test_model_level_hook_signature_checked_at_construction(tiny_args):
    class Broken(BaseModel):
        def final_forward(self):
            return None

    with pytest.raises(HookError, match="final_forward at model Broken"):
        Broken(tiny_args())


def test_near_miss_method_name_warns(tiny_args):
    class Typo(BaseMixin):
        def atention_fn(self, q, k, v, mask, dropout_fn, **kw_args):
            return q

        def word_embedding_forward_default(self, input_ids, **kw_args):
            return input_ids

    with pytest.warns(UserWarning) as record:
        BaseModel(tiny_args()).add_mixin("typo", Typo())
    messages = [str(w.message) for w in record]
    assert any("'atention_fn'" in m and "Did you mean 'attention_fn'" in m for m in messages)
    assert any("'word_embedding_forward_default'" in m for m in messages)


# --------------------------------------------------------------------------- kw_args protocol
def test_extra_kwargs_and_layer_id_reach_every_hook(tiny_args, tokens):
    ids, pos = tokens
    seen = {}

    def record(name, kw_args):
        seen.setdefault(name, []).append((kw_args.get("marker"), kw_args.get("layer_id")))

    class Recorder(BaseMixin):
        @BaseMixin.non_conflict
        def attention_fn(self, q, k, v, mask, dropout_fn, old_impl=None, **kw_args):
            record("attention_fn", kw_args)
            return old_impl(q, k, v, mask, dropout_fn, **kw_args)

        @BaseMixin.non_conflict
        def attention_forward(self, hidden_states, mask, old_impl=None, **kw_args):
            record("attention_forward", kw_args)
            return old_impl(hidden_states, mask, **kw_args)

        @BaseMixin.non_conflict
        def mlp_forward(self, hidden_states, old_impl=None, **kw_args):
            record("mlp_forward", kw_args)
            return old_impl(hidden_states, **kw_args)

        @BaseMixin.non_conflict
        def word_embedding_forward(self, input_ids, output_cross_layer, old_impl=None, **kw_args):
            record("word_embedding_forward", kw_args)
            return old_impl(input_ids, output_cross_layer=output_cross_layer, **kw_args)

        @BaseMixin.non_conflict
        def position_embedding_forward(self, position_ids, output_cross_layer, old_impl=None, **kw_args):
            record("position_embedding_forward", kw_args)
            return old_impl(position_ids, output_cross_layer=output_cross_layer, **kw_args)

        @BaseMixin.non_conflict
        def final_forward(self, logits, old_impl=None, **kw_args):
            record("final_forward", kw_args)
            return old_impl(logits, **kw_args)

        @BaseMixin.non_conflict
        def layer_forward(self, hidden_states, mask, *args, old_impl=None, **kw_args):
            record("layer_forward", kw_args)
            return old_impl(hidden_states, mask, *args, **kw_args)

    model = BaseModel(tiny_args()).eval()
    model.add_mixin("rec", Recorder())
    model(ids, pos, -1, marker="hello")
    per_layer = ["attention_fn", "attention_forward", "mlp_forward", "layer_forward"]
    for name in per_layer:
        assert seen[name] == [("hello", 0), ("hello", 1)], name
    for name in ("word_embedding_forward", "position_embedding_forward", "final_forward"):
        assert seen[name] == [("hello", None)], name
    assert all(type(layer_id) is int for name in per_layer for _, layer_id in seen[name])


def test_output_this_layer_and_output_cross_layer(tiny_args, tokens):
    ids, pos = tokens

    class Messenger(BaseMixin):
        def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
            output_cross_layer["counter"] = torch.tensor(100.0)  # seeds layer 0
            return self.transformer.word_embeddings(input_ids)

        @BaseMixin.non_conflict
        def layer_forward(self, hidden_states, mask, *args, old_impl=None, **kw_args):
            counter = kw_args["counter"]
            kw_args["output_this_layer"]["seen"] = counter
            kw_args["output_cross_layer"]["counter"] = counter + 1
            return old_impl(hidden_states, mask, *args, **kw_args)

    model = BaseModel(tiny_args(num_layers=3)).eval()
    model.add_mixin("messenger", Messenger())
    logits, *per_layer = model(ids, pos, -1)
    assert [out["seen"].item() for out in per_layer] == [100.0, 101.0, 102.0]
    assert logits.shape == (2, 10, 100)


def test_transformer_shared_by_two_models_uses_each_models_hooks(tiny_args, tokens):
    ids, pos = tokens
    first = BaseModel(tiny_args()).eval()
    second = BaseModel(tiny_args(), transformer=first.transformer).eval()
    second.add_mixin("hidden", HiddenOut())
    assert first(ids, pos, -1)[0].shape == (2, 10, 100)
    assert second(ids, pos, -1)[0].shape == (2, 10, 32)
    assert first(ids, pos, -1)[0].shape == (2, 10, 100)
