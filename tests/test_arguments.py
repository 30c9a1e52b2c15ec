"""get_args and the argument helpers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from sat.arguments import get_args, overwrite_args_by_dict, update_args_with_file
from sat.model import BaseModel

# A sample of §7's flags and defaults, one or more from every group.
DEFAULTS = {
    "num_layers": 6,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "vocab_size": 100,
    "max_sequence_length": 512,
    "layernorm_order": "pre",
    "inner_hidden_size": None,
    "hidden_size_per_attention_head": None,
    "model_parallel_size": 1,
    "skip_init": False,
    "num_multi_query_heads": 0,
    "is_gated_mlp": False,
    "is_rotary_emb": False,
    "layernorm_epsilon": 1e-5,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "drop_path": 0.0,
    "make_vocab_size_divisible_by": 128,
    "parallel_output": False,
    "experiment_name": "MyModel",
    "batch_size": 4,
    "lr": 1.0e-4,
    "mode": "pretrain",
    "seed": 1234,
    "zero_stage": 0,
    "checkpoint_activations": False,
    "checkpoint_num_layers": 1,
    "checkpoint_skip_layers": 0,
    "gradient_accumulation_steps": 1,
    "profiling": -1,
    "epochs": None,
    "log_interval": 50,
    "summary_dir": "",
    "lr_decay_iters": None,
    "lr_decay_style": "linear",
    "lr_decay_ratio": 0.1,
    "warmup": 0.01,
    "weight_decay": 0.01,
    "save": None,
    "load": None,
    "save_interval": 5000,
    "exit_interval": None,
    "wandb_project_name": "default_project",
    "eval_batch_size": None,
    "eval_iters": 100,
    "eval_interval": None,
    "strict_eval": False,
    "train_data": None,
    "split": "1000,1,1",
    "num_workers": 1,
    "block_size": 10000,
    "prefetch_factor": 4,
    "iterable_dataset": False,
    "temperature": 1.0,
    "top_p": 0.0,
    "top_k": 0,
    "num_beams": 1,
    "length_penalty": 0.0,
    "no_repeat_ngram_size": 0,
    "min_tgt_length": 0,
    "out_seq_length": 256,
    "input_source": "interactive",
    "output_path": "./samples",
    "max_inference_batch_size": 12,
    "tokenizer_type": "fake",
}


def test_defaults_on_cpu_without_backend_flag():
    args = get_args(["--mode", "inference"])
    for name, value in DEFAULTS.items():
        if name != "mode":
            assert getattr(args, name) == value, name
    assert args.train_iters == 10000
    assert args.device == "cpu" and args.distributed_backend == "gloo"
    assert args.rank == 0 and args.world_size == 1 and args.local_rank == 0
    assert not torch.distributed.is_initialized()  # one process: no process group


def test_training_mode_loads_shipped_deepspeed_config_and_args_win():
    args = get_args(["--zero-stage", "2", "--bf16", "--batch-size", "3", "--lr", "0.5", "--train-iters", "7"])
    config = args.deepspeed_config
    assert args.deepspeed and args.train_iters == 7
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "none"}
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["optimizer"]["params"]["lr"] == 0.5
    stage3 = get_args(["--zero-stage", "3"]).deepspeed_config
    assert stage3["zero_optimization"]["stage"] == 3 and not stage3["fp16"]["enabled"]


def test_user_deepspeed_config_overrides_args(tmp_path):
    config = {"train_micro_batch_size_per_gpu": 9, "bf16": {"enabled": True}, "optimizer": {"params": {"lr": 0.3}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    args = get_args(["--deepspeed_config", str(path), "--batch-size", "2", "--lr", "0.1"])
    assert args.batch_size == 9 and args.lr == 0.3 and args.bf16 and not args.fp16
    assert args.deepspeed_config == config


def test_argument_errors():
    with pytest.raises(SystemExit):
        get_args(["--train-iters", "5", "--epochs", "2"])
    with pytest.raises(SystemExit):
        get_args(["--fp16", "--bf16"])
    with pytest.raises(SystemExit):
        get_args(["--layernorm-order", "middle"])


def test_iterable_dataset_flag():
    assert get_args(["--mode", "inference", "--iterable-dataset"]).iterable_dataset is True
    args = get_args(["--mode", "inference", "--iterable-dataset", "custom"])
    assert args.iterable_dataset == "custom" and args.iterable_dataset_eval == "custom"
    assert get_args(["--mode", "inference", "--iterable-dataset-eval", "False"]).iterable_dataset_eval is False


def test_user_parser_flags_merge():
    parser = argparse.ArgumentParser()
    parser.add_argument("--my-flag", type=int, default=3)
    args = get_args(["--mode", "inference", "--my-flag", "8"], parser=parser)
    assert args.my_flag == 8 and args.num_layers == 6


def test_get_args_without_deepspeed_installed():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'deepspeed' or name.startswith('deepspeed.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sat import get_args\n"
        "args = get_args(['--mode', 'inference'])\n"
        "assert args.deepspeed is False and args.deepspeed_config is None\n"
        "args = get_args(['--zero-stage', '1'])\n"
        "assert args.deepspeed_config['zero_optimization']['stage'] == 1\n"
        "assert 'deepspeed' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_model_get_args_and_list_avail_args(capsys):
    class Custom(BaseModel):
        @classmethod
        def add_model_specific_args(cls, parser):
            group = parser.add_argument_group("Custom")
            group.add_argument("--custom-width", type=int, default=7, help="how wide")
            return parser

    args = Custom.get_args(num_layers=3, custom_width=9, not_an_arg="kept")
    assert args.num_layers == 3 and args.custom_width == 9 and args.not_an_arg == "kept"
    assert args.hidden_size == 1024 and not hasattr(args, "mode")  # model arguments only
    parser = Custom.list_avail_args()
    printed = capsys.readouterr().out
    assert "custom-width" in printed and "how wide" in printed and "num-layers" in printed
    assert parser.parse_args([]).custom_width == 7


def test_subclass_kwargs_override_args_defaults(tokens):
    """The original raised "got multiple values for keyword argument" here (issue #179)."""
    ids, pos = tokens

    class Decoder(BaseModel):
        def __init__(self, args, **kwargs):
            super().__init__(args, is_decoder=True, parallel_output=True, use_bias=False, layernorm_epsilon=1e-6)

    args = BaseModel.get_args(num_layers=2, hidden_size=32, num_attention_heads=4, max_sequence_length=16)
    model = Decoder(args)
    t = model.transformer
    assert t.is_decoder and t.parallel_output and not t.use_bias and t.layernorm_epsilon == 1e-6
    assert model.transformer.layers[0].attention.dense.bias is None
    assert model(ids, pos % 16, -1, encoder_outputs=torch.randn(2, 3, 32))[0].shape == (2, 10, 100)


def test_update_args_with_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_layers": 3, "vocab_path": "vocab.txt", "new_key": [1, 2]}))
    args = update_args_with_file(argparse.Namespace(num_layers=9, other=1), str(tmp_path / "config.json"))
    assert args.num_layers == 3 and args.other == 1 and args.new_key == [1, 2]
    assert args.vocab_path == os.path.join(str(tmp_path), "vocab.txt")
    with pytest.raises(FileNotFoundError, match="no configuration file at"):
        update_args_with_file(argparse.Namespace(), str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        update_args_with_file(argparse.Namespace(), str(tmp_path / "bad.json"))


def test_overwrite_args_by_dict_and_decoder_freq():
    overrides = {"hidden_size": 8, "decoder_freq": 2}
    args = overwrite_args_by_dict(argparse.Namespace(num_layers=5, hidden_size=4), overrides)
    assert args.hidden_size == 8
    assert args.is_decoder == [True, False, True, False, True]
    assert overrides == {"hidden_size": 8, "decoder_freq": 2}  # the caller's dict is untouched


def test_seed_is_not_reset_by_model_construction():
    torch.manual_seed(5)
    BaseModel(BaseModel.get_args(num_layers=1, hidden_size=8, num_attention_heads=2))
    after_build = torch.rand(1)
    torch.manual_seed(5)
    BaseModel(BaseModel.get_args(num_layers=1, hidden_size=8, num_attention_heads=2))
    assert torch.equal(torch.rand(1), after_build)
    torch.manual_seed(1234)
    reference = torch.rand(1)
    torch.manual_seed(5)
    BaseModel(BaseModel.get_args(num_layers=1, hidden_size=8, num_attention_heads=2))
    assert not torch.equal(torch.rand(1), reference)  # no hidden reseed to 1234
