"""TransformerConfig: the one table of architecture defaults, and what is derived from it."""

from __future__ import annotations

import argparse

import pytest
import torch

from sat.config import ARGS_DEFAULT, TransformerConfig, cli_default, saved_fields
from sat.model.transformer import BaseTransformer

# The original library's ARGS_DEFAULT (sat/transformer_defaults.py of SwissArmyTransformer 0.4).
ORIGINAL_ARGS_DEFAULT = {
    "embedding_dropout_prob": ("hidden_dropout", 0),
    "attention_dropout_prob": ("attention_dropout", 0),
    "output_dropout_prob": ("hidden_dropout", 0),
    "inner_hidden_size": ("inner_hidden_size", None),
    "hidden_size_per_attention_head": ("hidden_size_per_attention_head", None),
    "cross_hidden_size_per_attention_head": ("cross_hidden_size_per_attention_head", None),
    "checkpoint_activations": ("checkpoint_activations", False),
    "checkpoint_num_layers": ("checkpoint_num_layers", 1),
    "checkpoint_skip_layers": ("checkpoint_skip_layers", 0),
    "is_decoder": ("is_decoder", False),
    "cross_attn_hidden_size": ("cross_attn_hidden_size", None),
    "use_final_layernorm": ("use_final_layernorm", True),
    "layernorm_epsilon": ("layernorm_epsilon", 1e-5),
    "use_bias": ("use_bias", True),
    "use_qkv_bias": ("use_qkv_bias", False),
    "num_multi_query_heads": ("num_multi_query_heads", 0),
    "cross_num_multi_query_heads": ("cross_num_multi_query_heads", 0),
    "drop_path": ("drop_path", 0.0),
    "row_parallel_linear_final_bias": ("row_parallel_linear_final_bias", True),
    "is_gated_mlp": ("is_gated_mlp", False),
    "is_rotary_emb": ("is_rotary_emb", False),
    "rotary_base": ("rotary_base", 10000.0),
    "parallel_output": ("parallel_output", False),
    "num_experts": ("num_experts", 1),
}

SMALL = dict(num_layers=2, vocab_size=50, hidden_size=16, num_attention_heads=2, max_sequence_length=8)


def test_args_default_is_the_originals_table():
    assert ARGS_DEFAULT == ORIGINAL_ARGS_DEFAULT
    import sat.transformer_defaults

    assert sat.transformer_defaults.ARGS_DEFAULT is ARGS_DEFAULT


def test_command_line_defaults_come_from_the_table():
    from sat.arguments import add_model_config_args, add_training_args

    parser = add_training_args(add_model_config_args(argparse.ArgumentParser()))
    defaults = vars(parser.parse_args([]))
    # The original's get_args defaults (behaviour reference §7).
    expected = dict(
        num_layers=6,
        hidden_size=1024,
        num_attention_heads=16,
        vocab_size=100,
        max_sequence_length=512,
        layernorm_order="pre",
        hidden_dropout=0.1,
        attention_dropout=0.1,
        drop_path=0.0,
        layernorm_epsilon=1e-5,
        rotary_base=10000.0,
        num_multi_query_heads=0,
        inner_hidden_size=None,
        hidden_size_per_attention_head=None,
        is_gated_mlp=False,
        is_rotary_emb=False,
        parallel_output=False,
        checkpoint_activations=False,
        checkpoint_num_layers=1,
        checkpoint_skip_layers=0,
    )
    assert {key: defaults[key] for key in expected} == expected
    assert all(cli_default(key) == value for key, value in expected.items())


def test_saved_fields_follow_the_originals_model_config():
    assert list(saved_fields("always")) == [
        "num_layers",
        "vocab_size",
        "hidden_size",
        "num_attention_heads",
        "max_sequence_length",
        "layernorm_order",
    ]
    # The optional fields the original wrote when not at their default, plus rotary_base and the
    # fields it lacked (sliding_window, use_mlp_bias, rotary_dim, rotary_interleaved).
    assert saved_fields("changed") == {
        "layernorm_epsilon": 1e-5,
        "inner_hidden_size": None,
        "hidden_size_per_attention_head": None,
        "cross_hidden_size_per_attention_head": None,
        "parallel_output": False,
        "is_decoder": False,
        "cross_attn_hidden_size": None,
        "use_bias": True,
        "use_qkv_bias": False,
        "num_multi_query_heads": 0,
        "cross_num_multi_query_heads": 0,
        "row_parallel_linear_final_bias": True,
        "is_gated_mlp": False,
        "is_rotary_emb": False,
        "rotary_base": 10000.0,
        "num_experts": 1,
        "use_final_layernorm": True,
        "sliding_window": 0,
        "use_mlp_bias": False,
        "rotary_dim": None,
        "rotary_interleaved": False,
    }


def test_from_args_reads_args_and_lets_overrides_win():
    args = argparse.Namespace(**SMALL, hidden_dropout=0.3, layernorm_order="post", init_method_std=5.0)
    config = TransformerConfig.from_args(args, use_bias=False, hidden_size=32)
    assert (config.hidden_size, config.use_bias, config.layernorm_order) == (32, False, "post")
    assert config.embedding_dropout_prob == config.output_dropout_prob == 0.3
    assert config.init_method_std == 0.02  # never read from args, as in the original
    with pytest.raises(ValueError, match=r"needs args.vocab_size, args.max_sequence_length"):
        TransformerConfig.from_args(argparse.Namespace(num_layers=1, hidden_size=8, num_attention_heads=2))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(layernorm_order="middle"), "layernorm_order must be one of"),
        (dict(hidden_size=15), r"hidden_size \(15\) must be a multiple of num_attention_heads \(2\)"),
        (dict(num_attention_heads=4, num_multi_query_heads=3), r"must be a multiple of num_multi_query_heads \(3\)"),
        (dict(checkpoint_activations=True, checkpoint_skip_layers=2), "leaves no layer to checkpoint"),
    ],
)
def test_bad_configurations_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**SMALL, **change})


def test_backbone_takes_the_originals_signature_or_a_config():
    torch.manual_seed(0)
    positional = BaseTransformer(2, 50, 16, 2, 8, use_bias=False)
    torch.manual_seed(0)
    from_config = BaseTransformer(config=TransformerConfig(**SMALL, use_bias=False))
    state, other = positional.state_dict(), from_config.state_dict()
    assert list(state) == list(other) and all(torch.equal(state[key], other[key]) for key in state)
    assert "transformer.layers.0.attention.query_key_value.bias" not in state
    assert positional.config == from_config.config
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_layer'"):
        BaseTransformer(**{**SMALL, "num_layer": 3})


def test_config_fields_read_and_write_as_backbone_attributes():
    config = TransformerConfig(**SMALL)
    transformer = BaseTransformer(config=config)
    assert transformer.config is not config  # the caller's object is not shared
    assert (transformer.hidden_size, transformer.parallel_output) == (16, False)
    transformer.parallel_output = True
    assert transformer.config.parallel_output and not config.parallel_output
