"""Property-based tests (hypothesis): random valid inputs round-trip, random invalid ones raise
the documented error type. Covers ``model_config.json`` and args-file parsing, the HF config
mapping and the hook signature check."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sat.arguments import update_args_with_file
from sat.checkpoint import CheckpointError, extract_model_specific_args_to_dump, read_model_config
from sat.model import GPT2Model, LLaMAModel
from sat.model.build import get_meta_model
from sat.model.hook_specs import HOOK_SPECS
from sat.model.hooks import HookError, check_hook_signature

SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # derandomize: CI draws the same examples every run
MODEL_SETTINGS = settings(SETTINGS, max_examples=8)  # each example builds models

_names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda name: not name.endswith("_path"))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def _write(text: str) -> str:
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "model_config.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# --------------------------------------------------------------------------- model_config.json / args files
@SETTINGS
@given(st.dictionaries(_names.filter(lambda name: name != "tokenizer_type"), _json_values, max_size=6))
def test_config_files_round_trip(config):
    path = _write(json.dumps(config))
    assert read_model_config(path) == config
    args = update_args_with_file(argparse.Namespace(existing=1), path)
    assert {key: getattr(args, key) for key in config} == config
    assert args.existing == config.get("existing", 1)  # file values win, others stay


@SETTINGS
@given(st.lists(_json_values, max_size=3) | st.integers() | st.text(max_size=5) | st.booleans() | st.none())
def test_config_files_that_are_not_objects_are_refused(value):
    path = _write(json.dumps(value))
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        read_model_config(path)
    with pytest.raises(ValueError, match="must hold a JSON object"):
        update_args_with_file(argparse.Namespace(), path)


@SETTINGS
@given(st.text(min_size=1, max_size=30))
def test_config_files_that_are_not_json_are_refused(text):
    try:
        json.loads(text)
    except ValueError:
        path = _write(text)
        with pytest.raises(CheckpointError, match="is not valid JSON"):
            read_model_config(path)
        with pytest.raises(ValueError, match="is not valid JSON"):
            update_args_with_file(argparse.Namespace(), path)


_architectures = st.fixed_dictionaries(
    {
        "num_layers": st.integers(1, 3),
        "num_attention_heads": st.sampled_from([1, 2, 4]),
        "head_width": st.sampled_from([4, 8]),
        "vocab_size": st.integers(8, 300),
        "max_sequence_length": st.integers(8, 128),
        "layernorm_order": st.sampled_from(["pre", "post", "sandwich"]),
        "layernorm_epsilon": st.sampled_from([1e-5, 1e-6, 1e-12]),
        "inner_hidden_size": st.none() | st.sampled_from([16, 48]),
    }
)


@MODEL_SETTINGS
@given(_architectures)
def test_model_config_schema_round_trips_the_architecture(arch):
    """What ``model_config.json`` records rebuilds the same backbone."""
    arch = dict(arch)
    arch["hidden_size"] = arch.pop("head_width") * arch["num_attention_heads"]
    model = get_meta_model(GPT2Model.get_args(**arch), GPT2Model)
    path = _write(json.dumps(extract_model_specific_args_to_dump(model.transformer, model)))
    args = update_args_with_file(GPT2Model.get_args(), path)
    rebuilt = get_meta_model(args, GPT2Model)
    assert rebuilt.transformer.config == model.transformer.config
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }


# --------------------------------------------------------------------------- the HF config mapping
@MODEL_SETTINGS
@given(
    st.integers(1, 3),
    st.sampled_from([(4, 2), (4, 4), (2, 1)]),
    st.sampled_from([8, 16]),
    st.integers(16, 200),
    st.sampled_from([1e-5, 1e-6]),
    st.floats(1e3, 1e6),
)
def test_llama_config_maps_to_sat_and_back(layers, heads, head_dim, vocab, eps, theta):
    from transformers import LlamaConfig

    from sat.hf.family import family_for_model_type

    num_heads, kv_heads = heads
    config = LlamaConfig(
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        hidden_size=num_heads * head_dim,
        intermediate_size=3 * num_heads * head_dim,
        vocab_size=vocab,
        rms_norm_eps=eps,
        rope_theta=theta,
        max_position_embeddings=64,
    )
    family = family_for_model_type("llama")
    model = LLaMAModel(LLaMAModel.get_args(**family.config_to_args(config)))  # real: the head's tie is read
    back = family.model_to_config(model)
    for field in (
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_size",
        "intermediate_size",
        "vocab_size",
        "rms_norm_eps",
        "max_position_embeddings",
    ):
        assert getattr(back, field) == getattr(config, field), field
    assert back.rope_parameters["rope_theta"] == pytest.approx(config.rope_parameters["rope_theta"], rel=1e-12)


@SETTINGS
@given(st.from_regex(r"[a-z][a-z0-9_]{2,12}", fullmatch=True))
def test_unknown_hf_model_types_are_refused_by_name(model_type):
    from sat.hf.family import families, family_for_model_type

    if model_type in families():
        return
    with pytest.raises(ValueError, match=f"cannot translate model_type '{model_type}'; supported:"):
        family_for_model_type(model_type)


# --------------------------------------------------------------------------- hook signatures
_KINDS = [
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD,
]


@st.composite
def _signatures(draw, spec):
    """Random valid Python signatures over the hook's own names and a few others."""
    pool = [*spec.positional, *spec.keywords, "old_impl", "extra", "other"]
    names = draw(st.lists(st.sampled_from(pool), unique=True, max_size=len(pool)))
    kinds = sorted((draw(st.sampled_from([_KINDS[0], _KINDS[1], _KINDS[3]])) for _ in names), key=_KINDS.index)
    params, seen_default = [], False
    for name, kind in zip(names, kinds, strict=True):
        has_default = draw(st.booleans())
        if kind is not inspect.Parameter.KEYWORD_ONLY:  # positional defaults run to the end
            has_default = has_default or seen_default
            seen_default = has_default
        params.append(inspect.Parameter(name, kind, default=None if has_default else inspect.Parameter.empty))
    if draw(st.booleans()):
        at = sum(p.kind < inspect.Parameter.VAR_POSITIONAL for p in params)
        params.insert(at, inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL))
    if draw(st.booleans()):
        params.append(inspect.Parameter("kw_args", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _backbone_can_call(signature: inspect.Signature, spec, wraps: bool) -> bool:
    """The oracle: the backbone's call binds, counting parameters the caller's own keywords may
    fill (required keyword-capable parameters the backbone does not pass itself)."""
    passed = {name: None for name in spec.keywords}
    if wraps:
        passed["old_impl"] = None
    positional = [p for p in signature.parameters.values() if p.kind < inspect.Parameter.VAR_POSITIONAL]
    filled_by_position = {p.name for p in positional[: len(spec.positional)]}
    positional_only = {p.name for p in positional if p.kind is inspect.Parameter.POSITIONAL_ONLY}
    if (filled_by_position | positional_only) & {*spec.keywords, *(["old_impl"] if wraps else [])}:
        # An error even where Python binds it: a keyword the backbone passes would not reach
        # a positional-only parameter of that name, which keeps its default or another value.
        return False
    for p in signature.parameters.values():
        caller_may_pass = p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if caller_may_pass and p.default is p.empty and p.name not in filled_by_position and p.name not in passed:
            passed[p.name] = None
    try:
        signature.bind(*[None] * len(spec.positional), **passed)
    except TypeError:
        return False
    return not wraps or "old_impl" in signature.parameters


@SETTINGS
@given(st.data())
def test_hook_signature_check_agrees_with_binding(data):
    spec = data.draw(st.sampled_from(list(HOOK_SPECS.values())))
    signature = data.draw(_signatures(spec))
    wraps = data.draw(st.booleans())

    def hook(*args, **kwargs):
        return None

    hook.__signature__ = signature
    if _backbone_can_call(signature, spec, wraps):
        check_hook_signature(hook, spec, "a property test", wraps)
    else:
        with pytest.raises(HookError, match=f"Hook {spec.name} at a property test: "):
            check_hook_signature(hook, spec, "a property test", wraps)
