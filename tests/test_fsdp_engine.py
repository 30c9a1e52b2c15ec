"""``training_main`` on the FSDP2 engine (``--engine fsdp``) over 2 processes (gloo): the same
losses as DeepSpeed ZeRO-2 in fp32, an exact resume in new processes, bf16 training (with
activation checkpointing), and
checkpoints in the DeepSpeed path's layout that ``AutoModel.from_pretrained`` loads.

The runs are ``tests/ds_worker.py`` processes (``tests/test_training.py``'s tiny causal LM,
dropout 0.1, 2 accumulated micro-batches of 4 sequences per rank) for 20 iterations, with
checkpoints at 10 and 20. A run per configuration is shared by the tests.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from test_training import ARGV, launch

from sat import get_args
from sat.model import AutoModel

ITERATIONS = 20
MICRO_BATCHES = 2 * ITERATIONS
CONFIGS = {
    "deepspeed": ["--zero-stage", "2"],
    "fsdp": ["--engine", "fsdp"],
    "bf16": ["--engine", "fsdp", "--bf16", "--checkpoint-activations"],
}
_RUNS: dict = {}


def _argv(config: str, save: str) -> list[str]:
    steps = ["--train-iters", str(ITERATIONS), "--save-interval", "10", "--log-interval", "10"]
    return [*ARGV, *steps, "--save", save, *CONFIGS[config]]


def run(tmp_path_factory, config: str) -> tuple[list[dict], str]:
    """The uninterrupted 2-process run of ``config`` and its checkpoint directory."""
    if config not in _RUNS:
        workdir = str(tmp_path_factory.mktemp(config))
        save = os.path.join(workdir, "checkpoints")
        results = launch(workdir, 2, _argv(config, save))
        _RUNS[config] = (results, os.path.join(save, results[0]["experiment_name"]))
    return _RUNS[config]


def _assert_loads_as_trained(checkpoint: str, params: dict[str, torch.Tensor]) -> None:
    model, _ = AutoModel.from_pretrained(checkpoint)
    assert type(model).__name__ == "BaseModel"  # not fully_shard's FSDPBaseModel
    named = dict(model.named_parameters())
    assert named.keys() == params.keys()
    for name, value in named.items():
        assert torch.equal(value.float(), params[name]), name


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp_fp32_follows_deepspeed_zero2_and_saves_its_layout(tmp_path_factory):
    deepspeed, _ = run(tmp_path_factory, "deepspeed")
    fsdp, checkpoint = run(tmp_path_factory, "fsdp")
    for rank in range(2):
        assert len(fsdp[rank]["losses"]) == len(deepspeed[rank]["losses"]) == MICRO_BATCHES
        differences = [abs(a - b) for a, b in zip(fsdp[rank]["losses"], deepspeed[rank]["losses"])]
        assert max(differences) < 1e-5, differences
        assert fsdp[rank]["test_sample_losses"] == pytest.approx(deepspeed[rank]["test_sample_losses"], abs=1e-5)
    print(f"FSDP vs DeepSpeed ZeRO-2, {MICRO_BATCHES} micro-batch losses: max difference {max(differences):.1e}")
    for name, value in fsdp[0]["params"].items():  # gathered from the shards: the same on both ranks
        assert torch.equal(value, fsdp[1]["params"][name]), name

    assert set(os.listdir(checkpoint)) == {"10", "20", "latest", "model_config.json"}
    assert open(os.path.join(checkpoint, "latest")).read() == "20"
    rng = {"rng_states_rank_00000.pt", "rng_states_rank_00001.pt"}
    expected = {"mp_rank_00_model_states.pt", "fsdp_optim_states.pt", "manifest.json", *rng}
    assert set(os.listdir(os.path.join(checkpoint, "20"))) == expected
    state = torch.load(os.path.join(checkpoint, "20", "mp_rank_00_model_states.pt"), weights_only=True)
    assert (state["iteration"], state["engine"], state["precision"], state["dp_world_size"]) == (20, "fsdp", "fp32", 2)
    assert state["data_position"] == {"train": MICRO_BATCHES}
    assert state["client_lr_scheduler"]["num_iters"] == ITERATIONS + 1
    assert "rng_tracker_states" in state and "torch_rng_state" in state
    optimizer = torch.load(os.path.join(checkpoint, "20", "fsdp_optim_states.pt"), weights_only=True)
    assert set(optimizer) == {"optimizer"}  # fp32: the parameters are the master weights
    assert set(optimizer["optimizer"]["state"]) == set(fsdp[0]["params"])  # whole, keyed by name
    _assert_loads_as_trained(checkpoint, fsdp[0]["params"])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp_resume_from_iteration_10_in_new_processes_continues_the_same_loss_curve(tmp_path, tmp_path_factory):
    reference, reference_checkpoint = run(tmp_path_factory, "fsdp")
    # The uninterrupted run's state at iteration 10, as a run killed after saving it leaves it
    # (tests/test_training.py kills a DeepSpeed run; a copy saves 10 iterations of test time).
    save = tmp_path / "checkpoints"
    checkpoint = str(save / os.path.basename(reference_checkpoint))
    shutil.copytree(reference_checkpoint, checkpoint, ignore=shutil.ignore_patterns("20"))
    with open(os.path.join(checkpoint, "latest"), "w") as f:
        f.write("10")

    resumed = launch(str(tmp_path), 2, [*_argv("fsdp", str(save)), "--load", checkpoint])
    for rank in range(2):
        assert resumed[rank]["losses"] == reference[rank]["losses"][MICRO_BATCHES // 2 :]  # iterations 11-20
        assert resumed[rank]["test_sample_losses"] == reference[rank]["test_sample_losses"]
        for name, value in reference[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][name], value), name
    assert sorted(os.listdir(checkpoint)) == sorted(os.listdir(reference_checkpoint))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp_bf16_with_activation_checkpointing_trains_and_saves_bf16_weights_with_fp32_masters(tmp_path_factory):
    results, checkpoint = run(tmp_path_factory, "bf16")
    losses = results[0]["losses"]
    assert len(losses) == MICRO_BATCHES and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    state = torch.load(os.path.join(checkpoint, "20", "mp_rank_00_model_states.pt"), weights_only=True)
    assert state["precision"] == "bf16"
    assert all(value.dtype == torch.bfloat16 for value in state["module"].values() if value.is_floating_point())
    saved = torch.load(os.path.join(checkpoint, "20", "fsdp_optim_states.pt"), weights_only=True)
    for key, master in saved["master"].items():  # the fp32 weights the optimizer steps, rounded in the module
        assert master.dtype == torch.float32 and torch.equal(master.bfloat16(), state["module"][key]), key
    # The workers' parameters are the fp32 masters; from_pretrained gives their bf16 rounding.
    rounded = {name: value.bfloat16().float() for name, value in results[0]["params"].items()}
    _assert_loads_as_trained(checkpoint, rounded)


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--model-parallel-size", "2"], "model parallelism"),
        (["--zero-stage", "2"], "drop --zero-stage 2"),
        (["--fp16"], "use --bf16"),
    ],
)
def test_fsdp_refuses_what_it_does_not_do(flags, problem, capsys):
    with pytest.raises(SystemExit):
        get_args(["--engine", "fsdp", *flags])
    assert problem in capsys.readouterr().err
