"""training_main end to end: ZeRO 0-3 in fp32 and bf16 over 2 processes (gloo), exact resume
after a kill, a crash in the middle of a checkpoint write, one process without a launcher,
NaN steps, and the pieces (parameter groups, optimizers, precision checks, timers).

The runs are ``tests/ds_worker.py`` processes: a tiny causal LM (2 layers, hidden 32, dropout
0.1) for 8 iterations of 2 accumulated micro-batches of 4 sequences per rank, checkpoints at 4
and 8, and a strict test evaluation of 10 sequences at the end (the second rank gets only a
placeholder in the last batch). A reference run per configuration is shared by the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sat.helpers import get_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ds_worker.py")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from ds_worker import CountingSequences, sample_losses  # noqa: E402

ARGV = [
    "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--vocab-size", "64",
    "--max-sequence-length", "32", "--hidden-dropout", "0.1", "--attention-dropout", "0.1",
    "--train-data", "train", "--test-data", "test", "--strict-eval", "--split", "1",
    "--batch-size", "4", "--eval-batch-size", "4", "--gradient-accumulation-steps", "2",
    "--train-iters", "8", "--lr", "0.01", "--log-interval", "4", "--save-interval", "4",
    "--num-workers", "0", "--experiment-name", "tiny",
]  # fmt: skip
LAUNCH_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(workdir, world_size: int, argv: list[str], env: dict | None = None, expect_rc: int = 0) -> list[dict]:
    """Run ``world_size`` workers (ranks through the environment, as a launcher sets them; none
    at all for one process) and return each rank's results (``None`` for a rank that left none)."""
    out = os.path.join(workdir, "out")
    os.makedirs(out, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    base.update(OMP_NUM_THREADS="1", SAT_TEST_OUT=out, **(env or {}))
    port = str(get_free_port())
    procs = []
    for rank in range(world_size):
        rank_env = dict(base)
        if world_size > 1:
            rank_env.update(
                RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
            )  # fmt: skip
        log = open(os.path.join(workdir, f"log{rank}.txt"), "w")
        procs.append(
            (subprocess.Popen([sys.executable, WORKER, *argv], env=rank_env, cwd=workdir, stdout=log, stderr=log), log)
        )
    for proc, log in procs:
        proc.wait(timeout=300)
        log.close()
    for rank, (proc, _) in enumerate(procs):
        if proc.returncode != expect_rc:
            with open(os.path.join(workdir, f"log{rank}.txt")) as f:
                pytest.fail(f"rank {rank} exited with {proc.returncode}, expected {expect_rc}:\n{f.read()[-4000:]}")
    results = []
    for rank in range(world_size):
        path = os.path.join(out, f"rank{rank}.json")
        if not os.path.exists(path):
            results.append(None)
            continue
        with open(path) as f:
            result = json.load(f)
        result["params"] = torch.load(os.path.join(out, f"rank{rank}.pt"), weights_only=True)
        result["log"] = open(os.path.join(workdir, f"log{rank}.txt")).read()
        results.append(result)
    return results


def _config_argv(stage: int, precision: str, save: str) -> list[str]:
    return [*ARGV, "--zero-stage", str(stage), "--save", save, *(["--bf16"] if precision == "bf16" else [])]


_REFERENCE: dict = {}


def reference_run(tmp_path_factory, stage: int, precision: str) -> tuple[list[dict], str]:
    """The uninterrupted 2-process run of a configuration (run once, shared by the tests)."""
    if (stage, precision) not in _REFERENCE:
        workdir = str(tmp_path_factory.mktemp(f"zero{stage}-{precision}"))
        save = os.path.join(workdir, "checkpoints")
        results = launch(workdir, 2, _config_argv(stage, precision, save))
        _REFERENCE[stage, precision] = (results, os.path.join(save, results[0]["experiment_name"]))
    return _REFERENCE[stage, precision]


def _test_tokens(vocab: int = 64) -> torch.Tensor:
    data = CountingSequences(10, vocab, offset=1000)
    return torch.stack([data[i] for i in range(10)])


def _load(checkpoint_dir: str, dtype: torch.dtype = torch.float32):
    from sat.model import AutoModel

    model, _ = AutoModel.from_pretrained(checkpoint_dir)
    return model.to(dtype).eval()


def _expected_files(stage: int, precision: str) -> set[str]:
    files = {"manifest.json", "mp_rank_00_model_states.pt", "rng_states_rank_00000.pt", "rng_states_rank_00001.pt"}
    if stage > 0:  # ZeRO's optimizer shards, one per rank
        prefix = "bf16_" if precision == "bf16" else ""
        files |= {f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)}
    if stage == 3:
        files |= {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(2)}
    return files


# ----------------------------------------------------------------------------- ZeRO stages
@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_trains_checkpoints_and_reloads(tmp_path_factory, stage, precision):
    results, checkpoint = reference_run(tmp_path_factory, stage, precision)
    rank0, rank1 = results

    # The loss falls: the last 4 micro-batches against the first 4.
    losses = rank0["losses"]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.92 * sum(losses[:4]) / 4, losses

    # Both ranks hold the same parameters.
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name

    # The original layout, plus the training state.
    root = os.path.dirname(checkpoint)
    assert sorted(os.listdir(root)) == ["runs", rank0["experiment_name"]]  # tensorboard beside, not in cwd
    events = EventAccumulator(os.path.join(root, "runs", rank0["experiment_name"]))
    events.Reload()
    assert [e.step for e in events.Scalars("Train/train_loss")] == [4, 8]  # every --log-interval
    scripts = {"zero_to_fp32.py", "zero_to_torch.py"} if stage > 0 else set()  # DeepSpeed's recovery scripts
    assert set(os.listdir(checkpoint)) == {"4", "8", "latest", "model_config.json"} | scripts
    assert open(os.path.join(checkpoint, "latest")).read() == "8"
    for iteration in ("4", "8"):
        assert set(os.listdir(os.path.join(checkpoint, iteration))) == _expected_files(stage, precision)
    state = torch.load(os.path.join(checkpoint, "8", "mp_rank_00_model_states.pt"), weights_only=True)
    assert state["iteration"] == 8 and state["zero_stage"] == stage and state["precision"] == precision
    assert state["data_position"] == {"train": 16}
    assert state["client_lr_scheduler"]["num_iters"] == 9
    assert "rng_tracker_states" in state and "np_rng_state" in state

    # from_pretrained gives the trained weights and the final evaluation's per-sample losses.
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = _load(checkpoint, dtype)
    for name, value in model.named_parameters():
        assert torch.equal(value.float(), rank0["params"][name]), name
    with torch.no_grad():  # in the evaluation's batches (CPU matmuls round by batch shape)
        recomputed = torch.cat([sample_losses(model, batch) for batch in _test_tokens().split([4, 4, 2])])
    evaluated = torch.tensor(rank0["test_sample_losses"])
    assert evaluated.shape == (10,)  # 10 samples: rank 1's placeholder in the last batch was dropped
    if stage < 3:
        assert torch.equal(recomputed, evaluated)
    else:  # ZeRO-3 runs its linear layers through its own autograd function: last-bit differences
        assert torch.allclose(recomputed, evaluated, rtol=0, atol=1e-5 if precision == "fp32" else 2e-3)


# ----------------------------------------------------------------------------- resume
def _resume(workdir: str, checkpoint: str, stage: int) -> list[dict]:
    argv = _config_argv(stage, "fp32", os.path.dirname(checkpoint))
    return launch(workdir, 2, [*argv, "--load", checkpoint])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_resume_after_kill_continues_the_same_loss_curve_zero0(tmp_path, tmp_path_factory):
    reference, _ = reference_run(tmp_path_factory, 0, "fp32")
    save = str(tmp_path / "checkpoints")
    killed = launch(str(tmp_path), 2, _config_argv(0, "fp32", save), env={"SAT_TEST_KILL_AT": "4"}, expect_rc=-9)
    assert killed == [None, None]
    (experiment,) = [d for d in os.listdir(save) if d != "runs"]
    checkpoint = os.path.join(save, experiment)
    assert open(os.path.join(checkpoint, "latest")).read() == "4"

    resumed = _resume(str(tmp_path / "resumed"), checkpoint, 0)
    for rank in range(2):
        assert resumed[rank]["losses"] == reference[rank]["losses"][8:]  # micro-batches of iterations 5-8
        assert resumed[rank]["test_sample_losses"] == reference[rank]["test_sample_losses"]
        for name, value in reference[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][name], value), name


@pytest.mark.multiprocess
@pytest.mark.slow
def test_crash_during_checkpoint_write_leaves_previous_loadable_and_resume_is_exact_zero2(tmp_path, tmp_path_factory):
    reference, reference_checkpoint = reference_run(tmp_path_factory, 2, "fp32")
    save = str(tmp_path / "checkpoints")
    launch(str(tmp_path), 2, _config_argv(2, "fp32", save), env={"SAT_TEST_CRASH_SAVE_AT": "8"}, expect_rc=-9)
    (experiment,) = [d for d in os.listdir(save) if d != "runs"]
    checkpoint = os.path.join(save, experiment)
    # The half-written checkpoint 8 never became visible; `latest` still names 4.
    assert "8" not in os.listdir(checkpoint) and "8.partial" in os.listdir(checkpoint)
    assert open(os.path.join(checkpoint, "latest")).read() == "4"
    model = _load(checkpoint)
    expected = torch.load(os.path.join(reference_checkpoint, "4", "mp_rank_00_model_states.pt"), weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected["module"][name]), name

    resumed = _resume(str(tmp_path / "resumed"), checkpoint, 2)
    assert sorted(os.listdir(checkpoint)) == sorted(os.listdir(reference_checkpoint))  # the partial folder replaced
    for rank in range(2):
        assert resumed[rank]["losses"] == reference[rank]["losses"][8:]
        assert resumed[rank]["test_sample_losses"] == reference[rank]["test_sample_losses"]
        for name, value in reference[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][name], value), name


# ----------------------------------------------------------------------------- one process
@pytest.mark.slow
def test_single_process_without_launcher_skips_nan_micro_batches(tmp_path):
    save = str(tmp_path / "checkpoints")
    argv = [*ARGV, "--save", save, "--zero-stage", "2"]
    (result,) = launch(str(tmp_path), 1, argv, env={"SAT_TEST_NAN_AT": "3,4"})
    assert result["iteration"] == 8
    assert result["forward_calls"] == 18  # 16 micro-batches plus the 2 dropped ones
    assert [i for i, loss in enumerate(result["losses"]) if loss != loss] == [3, 4]
    finite = [loss for loss in result["losses"] if loss == loss]
    assert sum(finite[-4:]) < 0.92 * sum(finite[:4])
    assert all(torch.isfinite(p).all() for p in result["params"].values())
    assert "skipped 2 |" in result["log"] and "2 micro-batches skipped (NaN/Inf)" in result["log"]
    assert "runs" not in os.listdir(tmp_path) and "runs" in os.listdir(save)  # summaries beside the checkpoints
    state = torch.load(
        os.path.join(save, result["experiment_name"], "8", "mp_rank_00_model_states.pt"), weights_only=True
    )
    assert state["data_position"] == {"train": 18}  # dropped micro-batches consumed data too


_SINGLE: dict = {}


def frozen_embeddings_run(tmp_path_factory) -> tuple[dict, str]:
    """One process, embeddings frozen, no activation checkpointing (shared by two tests)."""
    if not _SINGLE:
        workdir = str(tmp_path_factory.mktemp("frozen"))
        save = os.path.join(workdir, "checkpoints")
        (result,) = launch(workdir, 1, [*ARGV, "--save", save], env={"SAT_TEST_MODEL": "frozen"})
        _SINGLE["frozen"] = (result, os.path.join(save, result["experiment_name"]))
    return _SINGLE["frozen"]


@pytest.mark.slow
def test_deepspeed_activation_checkpointing_matches_and_reaches_layers_above_frozen_embeddings(
    tmp_path, tmp_path_factory
):
    plain, _ = frozen_embeddings_run(tmp_path_factory)
    argv = [*ARGV, "--checkpoint-activations"]
    (checkpointed,) = launch(str(tmp_path), 1, argv, env={"SAT_TEST_MODEL": "frozen"})
    # Same first step exactly; after that the recomputed backward's other summation order
    # leaves last-bit gradient differences, which Adam magnifies where the true gradient is
    # about zero (the key bias), yet they stay far below what one step at lr=0.01 moves.
    assert checkpointed["losses"][:2] == plain["losses"][:2]
    assert torch.allclose(torch.tensor(checkpointed["losses"]), torch.tensor(plain["losses"]), rtol=1e-5, atol=0)
    for name, value in plain["params"].items():
        assert torch.allclose(checkpointed["params"][name], value, rtol=0, atol=1e-4), name


@pytest.mark.slow
def test_finetune_from_checkpoint_reinitialises_new_mixins_and_starts_at_zero(tmp_path, tmp_path_factory):
    _, pretrained = frozen_embeddings_run(tmp_path_factory)
    save = str(tmp_path / "checkpoints")
    argv = [*ARGV, "--save", save, "--load", pretrained, "--mode", "finetune", "--experiment-name", "tuned"]
    (result,) = launch(str(tmp_path), 1, argv, env={"SAT_TEST_MODEL": "instance"})
    # init_function ran after loading: iteration reset, the missing mixin re-initialised.
    assert result["init"] == {"iteration": 0, "logit_bias": [0.5, 0.5]}
    assert result["iteration"] == 8 and len(result["losses"]) == 16
    assert result["experiment_name"].startswith("tuned-")  # a new run, not a continuation of the loaded one
    assert sorted(os.listdir(os.path.join(save, result["experiment_name"])))[:2] == ["4", "8"]
    # Finetuning caps the first 100 steps at 5% of --lr (the original's auto warm-up).
    assert "iteration        4/       8 | elapsed time per iteration" in result["log"]
    assert "learning rate 5.000E-04" in result["log"]
    assert not torch.equal(result["params"]["mixins.logit_bias.bias"], torch.full((64,), 0.5))  # it trained


@pytest.mark.slow
def test_epochs_evaluation_and_exit_interval(tmp_path):
    save = str(tmp_path / "checkpoints")
    argv = [a for a in ARGV if a not in ("--train-iters", "8")]
    argv += ["--epochs", "1", "--valid-data", "test", "--exit-interval", "32", "--save", save]
    (result,) = launch(str(tmp_path), 1, argv)
    assert result is None  # exited inside training_main, as --exit-interval asks
    log = open(tmp_path / "log0.txt").read()
    # One epoch: 256 samples / 4 per batch / 2 accumulated = 32 iterations; evaluated once per epoch.
    assert "iteration       32/      32" in log and log.count("validation loss at iteration 32") == 1
    assert "exiting the program at iteration 32" in log
    (experiment,) = [d for d in os.listdir(save) if d != "runs"]
    state = torch.load(os.path.join(save, experiment, "32", "mp_rank_00_model_states.pt"), weights_only=True)
    assert state["data_position"] == {"train": 64, "valid": 0}  # strict evaluation reads its own pass


# ----------------------------------------------------------------------------- model parallel
@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_model_parallel_training_follows_the_single_process_losses(tmp_path, stage):
    """20 iterations at model parallel 2 (2 processes, ZeRO ``stage``) against 1 process: the same
    initial weights (drawn whole, then sharded) and data, so the same loss at every step; the
    merged final weights equal the single process's (within 1e-5)."""
    from sat.model import AutoModel
    from sat.tools.reshard import main as reshard_main

    argv = [
        *ARGV, "--hidden-dropout", "0", "--attention-dropout", "0", "--gradient-accumulation-steps", "1",
        "--train-iters", "20", "--save-interval", "20", "--zero-stage", str(stage),
    ]  # fmt: skip
    single = launch(str(tmp_path / "mp1"), 1, [*argv, "--save", str(tmp_path / "mp1" / "save")])[0]
    parallel = launch(
        str(tmp_path / "mp2"), 2, [*argv, "--model-parallel-size", "2", "--save", str(tmp_path / "mp2" / "save")]
    )
    assert len(single["losses"]) == 20 and single["losses"][-1] < 0.9 * single["losses"][0]
    for rank in range(2):
        differences = [abs(a - b) for a, b in zip(parallel[rank]["losses"], single["losses"])]
        assert len(differences) == 20 and max(differences) < 1e-4, differences
    print(f"MP2 vs MP1 training losses over 20 steps: max difference {max(differences):.1e}")

    checkpoint = str(tmp_path / "mp2" / "save" / parallel[0]["experiment_name"])
    reshard_main([checkpoint, str(tmp_path / "merged"), "--model-parallel-size", "1"])
    merged, _ = AutoModel.from_pretrained(str(tmp_path / "merged"))
    for name, value in merged.named_parameters():
        expected = single["params"][name]
        if name.endswith("query_key_value.bias"):  # [q | k | v], 32 each
            # The key bias cannot change attention (softmax ignores a constant per row): its
            # true gradient is 0, so Adam's normalised steps follow rounding noise. Skip it.
            value, expected = torch.cat((value[:32], value[64:])), torch.cat((expected[:32], expected[64:]))
        assert (value - expected).abs().max() < 1e-5, name
