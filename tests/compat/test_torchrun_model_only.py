"""The original's tests/test_model_parallel.py idiom: under torchrun, load a model with
from_pretrained (no get_args, no set-up of one's own), then mp_split_model it to 2 ranks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from sat.model import BertModel
from sat.training.model_io import save_checkpoint

SCRIPT = """
import os, sys, torch
from sat.mpu import mp_split_model
from sat.model import BertModel

with torch.no_grad():
    model, args = BertModel.from_pretrained(sys.argv[1])
    x = torch.ones((2, 16), dtype=torch.long)
    inp = x.clone(); inp[:, -4:] *= 90  # ids in both halves of the vocabulary
    a = model(input_ids=inp, position_ids=x, attention_mask=None, token_type_ids=x * 0)[0]
    mp_split_model(model, 2)
    b = model(input_ids=inp, position_ids=x, attention_mask=None, token_type_ids=x * 0)[0]
with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.txt"), "w") as f:  # not stdout: ranks interleave
    f.write(f"{(a - b).abs().max().item():.3e}")
"""


@pytest.mark.multiprocess
def test_from_pretrained_under_torchrun_then_mp_split_model(tmp_path):
    args = BertModel.get_args(
        num_layers=2, vocab_size=128, hidden_size=32, num_attention_heads=2, max_sequence_length=32, num_types=2
    )
    torch.manual_seed(0)
    args.save = str(tmp_path / "bert")
    save_checkpoint(1, BertModel(args), None, None, args)
    script = tmp_path / "split.py"
    script.write_text(textwrap.dedent(SCRIPT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    result = subprocess.run(command + [args.save, str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = [float((tmp_path / f"rank{rank}.txt").read_text()) for rank in range(2)]
    assert all(diff < 1e-5 for diff in diffs), diffs
