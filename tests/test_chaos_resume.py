"""The chaos resume harness (``scripts/chaos_resume.py``) on its short configuration: a 2-process
ZeRO-1 run killed inside a checkpoint save and inside the evaluation right after a complete
checkpoint, restarted with ``--load`` each time; training losses, validation losses and the final
weights equal the uninterrupted run's bitwise. The full matrix: ``python scripts/chaos_resume.py
--all`` (docs/reliability.md)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from chaos_resume import run_config, summary  # noqa: E402


@pytest.mark.multiprocess
@pytest.mark.slow
def test_killed_runs_resume_bitwise_including_validation(tmp_path):
    outcome = run_config("short", kills=2, seed=0, workdir=str(tmp_path))
    assert outcome.ok, summary(outcome)
    assert [(k.kind, k.done) for k in outcome.kills] == [("eval", True), ("save", True)]
    assert outcome.kills[1].during_save
    assert outcome.attempts == 3
    assert outcome.compared_train_losses > 0 and outcome.compared_eval_losses > 0
    assert (outcome.max_train_loss_diff, outcome.max_eval_loss_diff, outcome.max_weight_diff) == (0.0, 0.0, 0.0)


def test_measuring_the_cpu_for_the_mfu_leaves_the_training_random_stream_alone():
    # The first log line measures the CPU once; a resumed run logs for the first time at
    # another iteration, so a draw from the global generator there shifted its dropout masks.
    from sat.training.throughput import measured_cpu_matmul_flops

    state = torch.get_rng_state()
    measured_cpu_matmul_flops.__wrapped__(size=64, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)
