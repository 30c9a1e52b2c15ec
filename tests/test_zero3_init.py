"""ZeRO-3 from a pretrained checkpoint (``training_main --zero-stage 3 --load``): the model is built
inside ``deepspeed.zero.Init`` and the checkpoint loads into the partitions one submodule at a
time. Three ``tests/ds_worker.py`` runs of 10 iterations (no dropout) from one saved MP1 model:

- 1 process (MP1): the reference losses;
- 2 processes, data parallel: each rank holds half the parameter bytes, the loaded weights are
  the checkpoint's bitwise, the loss on the test sequences is the checkpoint's exactly, and the
  consolidated checkpoint it saves reloads in one process bitwise;
- 2 processes, model parallel 2 x data parallel 1 (4 processes, MP2 x DP2, is too heavy here):
  the losses equal the MP1 run's within 1e-5 at every step.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_training import ARGV, _load, _test_tokens, launch

from sat.model import BaseModel
from sat.training.model_io import save_checkpoint

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

RUN = [
    *ARGV, "--hidden-dropout", "0", "--attention-dropout", "0", "--gradient-accumulation-steps", "1",
    "--train-iters", "10", "--save-interval", "10", "--zero-stage", "3", "--mode", "finetune",
]  # fmt: skip


def _pretrained(path: str) -> BaseModel:
    """The checkpoint every run starts from: a tiny model of ``ARGV``'s architecture, seed 1."""
    args = BaseModel.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64, max_sequence_length=32
    )
    torch.manual_seed(1)
    model = BaseModel(args)
    args.save = path
    save_checkpoint(1, model, None, None, args)
    return model


def _run(tmp_path, name: str, world: int, *extra: str) -> list[dict]:
    workdir = str(tmp_path / name)
    argv = [*RUN, "--load", str(tmp_path / "pretrained"), "--save", os.path.join(workdir, "save"), *extra]
    return launch(workdir, world, argv, env={"SAT_TEST_RECORD_INIT": "1"})


def _test_loss(model: torch.nn.Module) -> float:
    from ds_worker import sample_losses

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same reduction order
    try:
        with torch.no_grad():
            return sample_losses(model.eval(), _test_tokens()).mean().item()
    finally:
        torch.set_num_threads(threads)


def test_zero3_loads_into_partitions_trains_saves_and_matches_model_parallel(tmp_path):
    pretrained = _pretrained(str(tmp_path / "pretrained"))
    expected = dict(pretrained.named_parameters())
    full_bytes = sum(p.nbytes for p in expected.values())
    single = _run(tmp_path, "mp1", 1)[0]
    data_parallel = _run(tmp_path, "dp2", 2)
    model_parallel = _run(tmp_path, "mp2", 2, "--model-parallel-size", "2")

    # Data parallel: half the parameters each, the checkpoint's values, its loss.
    checkpoint_loss = _test_loss(pretrained)
    for rank, result in enumerate(data_parallel):
        init = result["init"]
        assert init["full_param_bytes"] == full_bytes
        # Each parameter is split in two (the odd one padded by an element): about P/2 each.
        assert full_bytes / 2 <= init["param_bytes"] <= full_bytes / 2 + 4 * len(expected), init
        loaded = torch.load(str(tmp_path / "dp2" / "out" / f"init{rank}.pt"), weights_only=True)
        for name, value in expected.items():
            assert torch.equal(loaded[name], value), (rank, name)
        assert init["test_loss"] == checkpoint_loss
        print(f"ZeRO-3 rank {rank}: {init['param_bytes']} of {full_bytes} parameter bytes")
    assert len(data_parallel[0]["losses"]) == 10
    saved = _load(os.path.join(tmp_path, "dp2", "save", data_parallel[0]["experiment_name"]))
    for name, value in saved.named_parameters():
        assert torch.equal(value, data_parallel[0]["params"][name]), name

    # Model parallel 2 x data parallel 1 under ZeRO-3: every loss as in one process.
    assert single["init"]["test_loss"] == checkpoint_loss and single["init"]["param_bytes"] == full_bytes
    assert single["losses"][-1] < single["losses"][0]  # it trains
    for rank, result in enumerate(model_parallel):
        assert result["init"]["param_bytes"] < full_bytes  # its shard, whole (one data-parallel rank)
        differences = [abs(a - b) for a, b in zip(result["losses"], single["losses"])]
        assert len(differences) == 10 and max(differences) < 1e-5, (rank, differences)
    print(f"ZeRO-3 MP2 x DP1 vs MP1 losses over 10 steps: max difference {max(differences):.1e}")
