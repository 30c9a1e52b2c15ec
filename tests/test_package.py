"""import sat: what it pulls in, what it needs, and the logging helpers."""

from __future__ import annotations

import logging
import subprocess
import sys

HEAVY = ("deepspeed", "transformers", "triton", "wandb", "webdataset", "braceexpand")


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_import_pulls_in_no_heavy_dependency():
    code = (
        "import sys, sat\n"
        "from sat import AutoModel, get_args, training_main\n"
        "from sat.model import BaseModel, BaseMixin\n"
        "import sat.mpu, sat.transformer_defaults, sat.training.model_io, sat.resources, sat.data_utils\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_and_inference_work_with_deepspeed_absent():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY!r}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, sat\n"
        "from sat.model import BaseModel\n"
        "args = BaseModel.get_args(num_layers=1, hidden_size=16, num_attention_heads=2)\n"
        "out = BaseModel(args)(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)[None], -1)[0]\n"
        "print(tuple(out.shape))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 4, 100)"


def test_training_without_deepspeed_fails_clearly():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'deepspeed':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sat import get_args, training_main\n"
        "from sat.model import BaseModel\n"
        "args = get_args(['--train-iters', '1'])\n"
        "try:\n"
        "    training_main(args, BaseModel, None, None)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "training needs DeepSpeed" in result.stdout and "pip install deepspeed" in result.stdout


def test_public_names():
    import sat
    import sat.model
    import sat.transformer_defaults as defaults

    assert {"AutoModel", "get_args", "get_tokenizer", "training_main", "update_args_with_file"} <= set(dir(sat))
    assert sat.AutoModel is sat.model.AutoModel
    assert {"HOOKS_DEFAULT", "ARGS_DEFAULT", "standard_attention"} <= set(dir(defaults))
    from sat.helpers import print_all, print_rank0  # noqa: F401
    from sat.model.base_model import BaseMixin, BaseModel, non_conflict, replacable  # noqa: F401
    from sat.model.transformer import BaseTransformer, standard_attention  # noqa: F401
    from sat.training.deepspeed_training import training_main  # noqa: F401
    from sat.training.model_io import load_checkpoint, save_checkpoint  # noqa: F401

    assert sat.training_main is training_main


def test_print_rank0_and_loglevel(sat_log):
    from sat.helpers import print_all, print_rank0

    print_rank0("hello from rank 0")
    print_all("hello from everyone", level="WARNING")
    assert [(r.levelno, r.getMessage()) for r in sat_log.records] == [
        (logging.INFO, "hello from rank 0"),
        (logging.WARNING, "hello from everyone"),
    ]
    quiet = _run(
        "from sat.helpers import print_rank0\nprint_rank0('info line')\nprint_rank0('warn line', 'WARNING')\n",
        env={"SAT_LOGLEVEL": "WARNING"},
    )
    assert "info line" not in quiet.stderr and "warn line" in quiet.stderr


def test_names_that_moved_keep_their_old_paths():
    import pytest

    import sat.arguments
    import sat.checkpoint
    import sat.helpers
    import sat.model.auto
    import sat.model.base_model
    import sat.mpu.reshard
    import sat.resources
    import sat.runtime
    import sat.tools.reshard
    import sat.training.checkpointing
    import sat.training.model_io

    # Up a layer: resolved on first access through sat.helpers.moved_names.
    assert sat.helpers.list_avail_models is sat.model.auto.list_avail_models
    assert sat.helpers.list_avail_pretrained is sat.resources.list_avail_pretrained
    assert sat.helpers.check_if_zero3 is sat.runtime.check_if_zero3
    assert sat.model.base_model.AutoModel is sat.model.auto.AutoModel
    assert sat.mpu.reshard.reshard_checkpoint is sat.tools.reshard.reshard_checkpoint
    assert sat.mpu.reshard.main is sat.tools.reshard.main
    assert sat.mpu.reshard.shard_path is sat.checkpoint.shard_path
    with pytest.raises(AttributeError, match="module 'sat.helpers' has no attribute 'no_such_name'"):
        sat.helpers.no_such_name  # noqa: B018
    # Down a layer: plain re-exports.
    for name in ("initialize_distributed", "ensure_model_parallel", "set_random_seed", "reset_random_seed"):
        assert getattr(sat.arguments, name) is getattr(sat.runtime, name)
    assert sat.training.model_io.load_checkpoint is sat.checkpoint.load_checkpoint
    assert sat.training.model_io.save_checkpoint is sat.training.checkpointing.save_checkpoint


def test_model_class_lookup_imports_the_zoo_itself():
    result = _run(
        "import sys\n"
        "from sat.model.auto import get_model_class\n"
        "assert 'sat.model.official' not in sys.modules\n"
        "print(get_model_class('GPT2Model').__module__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sat.model.official.gpt2_model"


def test_old_reshard_command_runs_the_tool():
    for module in ("sat.tools.reshard", "sat.mpu.reshard"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "Split or merge a sat checkpoint" in result.stdout
