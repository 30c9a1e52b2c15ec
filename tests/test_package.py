"""import sat: what it pulls in, what it needs, and the logging helpers."""

from __future__ import annotations

import logging
import subprocess
import sys

HEAVY = ("deepspeed", "transformers", "triton", "wandb")


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_import_pulls_in_no_heavy_dependency():
    code = (
        "import sys, sat\n"
        "from sat import AutoModel, get_args\n"
        "from sat.model import BaseModel, BaseMixin\n"
        "import sat.mpu, sat.transformer_defaults, sat.training.model_io, sat.resources\n"
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


def test_public_names():
    import sat
    import sat.model
    import sat.transformer_defaults as defaults

    assert {"AutoModel", "get_args", "get_tokenizer", "update_args_with_file"} <= set(dir(sat))
    assert sat.AutoModel is sat.model.AutoModel
    assert {"HOOKS_DEFAULT", "ARGS_DEFAULT", "standard_attention"} <= set(dir(defaults))
    from sat.helpers import print_all, print_rank0  # noqa: F401
    from sat.model.base_model import BaseMixin, BaseModel, non_conflict, replacable  # noqa: F401
    from sat.model.transformer import BaseTransformer, standard_attention  # noqa: F401
    from sat.training.model_io import load_checkpoint, save_checkpoint  # noqa: F401


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
