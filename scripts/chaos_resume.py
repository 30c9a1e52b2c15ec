"""Chaos resume: kill a 2-process ``training_main`` run with SIGKILL at seeded random moments,
restart it with ``--load`` until it finishes, and compare it with an uninterrupted run.

::

    python scripts/chaos_resume.py --config zero1 --kills 3 --seed 0   # one configuration
    python scripts/chaos_resume.py --all --kills 3 --seed 0            # the full matrix
    python scripts/chaos_resume.py --list                              # the configurations

Each run is two ``scripts/chaos_worker.py`` processes (ranks through the environment, gloo on
CPU) in a process group of their own; a kill is ``os.killpg(group, SIGKILL)``. The kills:

- ``save``: inside a checkpoint save, right before the k-th ``os.replace`` of a random rank (a
  file written but not yet named, the directory rename, ``manifest.json``, ``latest``);
- ``eval``: in the evaluation of an iteration that is also a save iteration, after its
  checkpoint is complete (the resumed run must redo that evaluation);
- ``step``: a random delay after a random training iteration has started.

Compared with the uninterrupted run: every training loss each attempt logged (per iteration and
micro-batch), every complete evaluation (and every evaluation of the uninterrupted run must have
been completed by some attempt), and the final weights, bitwise. The report (stdout, and
``--report FILE`` as JSON) gives per configuration the kills, the kills during a save and the
largest differences; the exit status is 1 when any configuration differs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "scripts", "chaos_worker.py")
WORLD_SIZE = 2
EXPERIMENT = "chaos"

BASE_ARGV = [
    "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--vocab-size", "64",
    "--max-sequence-length", "16", "--hidden-dropout", "0.1", "--attention-dropout", "0.1",
    "--train-data", "train", "--valid-data", "valid", "--split", "1",
    "--batch-size", "2", "--eval-batch-size", "2", "--eval-iters", "2", "--gradient-accumulation-steps", "2",
    "--lr", "0.01", "--lr-decay-style", "cosine", "--warmup", "0.25", "--log-interval", "2",
    "--num-workers", "0", "--experiment-name", EXPERIMENT, "--seed", "1234",
]  # fmt: skip


@dataclass(frozen=True)
class Config:
    """A configuration of the matrix: extra flags, and the flag that must exist for it to run."""

    argv: tuple[str, ...]
    iterations: int = 12
    save_interval: int = 3
    eval_interval: int = 3
    requires: str | None = None


CONFIGS = {
    "zero1": Config(("--zero-stage", "1")),
    "zero2": Config(("--zero-stage", "2")),
    "zero3": Config(("--zero-stage", "3")),
    "mp2": Config(("--zero-stage", "1", "--model-parallel-size", "2")),
    "safetensors": Config(("--zero-stage", "1", "--checkpoint-format", "safetensors"), requires="--checkpoint-format"),
    "fsdp": Config(("--engine", "fsdp"), requires="--engine"),
    # The configuration of `make test` (tests/test_chaos_resume.py): one kill after a complete
    # checkpoint, inside the evaluation of the same iteration.
    "short": Config(("--zero-stage", "1"), iterations=4, save_interval=2, eval_interval=2),
}


@dataclass
class Kill:
    kind: str  # "save", "eval" or "step"
    iteration: int
    rank: int = 0
    replace: int = 0  # save: before which os.replace of the save
    delay: float = 0.0  # step: seconds after the iteration started
    during_save: bool = False  # paused in a save, or a <iteration>.partial directory existed at the kill
    done: bool = False


@dataclass
class Outcome:
    config: str
    kills: list[Kill] = field(default_factory=list)
    attempts: int = 0
    compared_train_losses: int = 0
    compared_eval_losses: int = 0
    max_train_loss_diff: float = 0.0
    max_eval_loss_diff: float = 0.0
    max_weight_diff: float = 0.0
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


# ----------------------------------------------------------------------------- running
def available(config: Config) -> bool:
    """Whether this sat has the flag ``config`` needs."""
    if config.requires is None:
        return True
    from sat.arguments import get_args

    flag_and_value = [a for a in config.argv[config.argv.index(config.requires) :][:2]]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            get_args(flag_and_value)
    except SystemExit:
        return False
    return True


def _argv(config: Config, save: str) -> list[str]:
    return [
        *BASE_ARGV, *config.argv, "--train-iters", str(config.iterations), "--save", save,
        "--save-interval", str(config.save_interval), "--eval-interval", str(config.eval_interval),
    ]  # fmt: skip


def _start(workdir: str, argv: list[str], env: dict) -> list[subprocess.Popen]:
    """The worker processes, all in one new process group (the first one's)."""
    from sat.helpers import get_free_port

    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    base.update(OMP_NUM_THREADS="1", SAT_CHAOS_OUT=os.path.join(workdir, "out"), **env)
    port = str(get_free_port())
    procs: list[subprocess.Popen] = []
    for rank in range(WORLD_SIZE):
        rank_env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))
        rank_env.update(LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = open(os.path.join(workdir, f"log{rank}.txt"), "a")
        group = procs[0].pid if procs else 0  # 0: a new process group, led by the first rank
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, *argv], env=rank_env, cwd=workdir, stdout=log, stderr=log, process_group=group
            )
        )
    return procs


def _started_iteration(out: str) -> int:
    """The last training iteration rank 0 has logged a micro-batch of."""
    path = os.path.join(out, "rank0.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    return max((json.loads(line).get("train", 0) for line in lines if line.endswith("}")), default=0)


def _partial_exists(save: str) -> bool:
    checkpoints = _experiment_dir(save)
    return os.path.isdir(checkpoints) and any(name.endswith(".partial") for name in os.listdir(checkpoints))


def _experiment_dir(save: str) -> str:
    """The run's checkpoint directory in ``save`` (``<experiment-name>-<date>``, resumed in place)."""
    found = [name for name in os.listdir(save) if name.startswith(EXPERIMENT)] if os.path.isdir(save) else []
    return os.path.join(save, found[0] if found else EXPERIMENT)


def _attempt(workdir: str, argv: list[str], kill: Kill | None, save: str, timeout: float) -> int | None:
    """Run one attempt until it ends or ``kill`` fires; returns the exit status (None: killed)."""
    out = os.path.join(workdir, "out")
    os.makedirs(out, exist_ok=True)
    env = {}
    if kill is not None and kill.kind == "save":
        env["SAT_CHAOS_PAUSE"] = f"save:{kill.iteration}:{kill.rank}:{kill.replace}"
    elif kill is not None and kill.kind == "eval":
        env["SAT_CHAOS_PAUSE"] = f"eval:{kill.iteration}:{kill.rank}"
    procs = _start(workdir, argv, env)
    deadline, fired_at = time.monotonic() + timeout, None
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            os.killpg(procs[0].pid, signal.SIGKILL)
            raise TimeoutError(f"an attempt in {workdir} ran past {timeout} s (logs: {workdir}/log*.txt)")
        paused = os.path.exists(os.path.join(out, "paused"))
        if kill is not None and fired_at is None and kill.kind == "step" and _started_iteration(out) >= kill.iteration:
            fired_at = time.monotonic() + kill.delay
        if paused or (fired_at is not None and time.monotonic() >= fired_at):
            # Paused inside a save by construction, or a save of this step was under way.
            kill.during_save = kill.kind == "save" or _partial_exists(save)
            os.killpg(procs[0].pid, signal.SIGKILL)
            for p in procs:
                p.wait()
            kill.done = True
            if paused:
                os.remove(os.path.join(out, "paused"))
            return None
        time.sleep(0.02)
    codes = [p.returncode for p in procs]
    return max(codes, key=abs)


def _read_records(out: str, rank: int) -> list[dict]:
    path = os.path.join(out, f"rank{rank}.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.endswith("}")]


# ----------------------------------------------------------------------------- comparing
@dataclass
class Run:
    """What one attempt logged, per rank: training losses by (iteration, micro-batch), complete
    evaluations by iteration, the os.replace count of each save."""

    train: list[dict[tuple[int, int], float]]
    evals: list[dict[int, list[float]]]
    replaces: dict[tuple[int, int], int]


def _parse(out: str, eval_iters: int) -> Run:
    train, evals, replaces = [], [], {}
    for rank in range(WORLD_SIZE):
        losses: dict[tuple[int, int], float] = {}
        micro: dict[int, int] = defaultdict(int)
        current: dict[int, list[float]] = defaultdict(list)
        complete: dict[int, list[float]] = {}
        for entry in _read_records(out, rank):
            if "train" in entry:
                losses[entry["train"], micro[entry["train"]]] = entry["loss"]
                micro[entry["train"]] += 1
            elif "eval" in entry:
                current[entry["eval"]].append(entry["loss"])
                if len(current[entry["eval"]]) == eval_iters:
                    complete[entry["eval"]] = current.pop(entry["eval"])
            elif "save" in entry:  # the first save of an iteration (a repeated one returns at once)
                replaces.setdefault((rank, entry["save"]), entry["replaces"])
        train.append(losses)
        evals.append(complete)
    return Run(train, evals, replaces)


def _compare(outcome: Outcome, reference: Run, attempts: list[Run], ref_dir: str, final_dir: str) -> None:
    for attempt_no, run in enumerate(attempts):
        for rank in range(WORLD_SIZE):
            for key, loss in run.train[rank].items():
                diff = abs(loss - reference.train[rank][key])
                outcome.max_train_loss_diff = max(outcome.max_train_loss_diff, diff)
                outcome.compared_train_losses += 1
                if loss != reference.train[rank][key]:
                    outcome.problems.append(f"attempt {attempt_no} rank {rank}: training loss {key} differs by {diff}")
            for iteration, losses in run.evals[rank].items():
                expected = reference.evals[rank][iteration]
                diff = max(abs(a - b) for a, b in zip(losses, expected))
                outcome.max_eval_loss_diff = max(outcome.max_eval_loss_diff, diff)
                outcome.compared_eval_losses += len(losses)
                if losses != expected:
                    outcome.problems.append(f"attempt {attempt_no} rank {rank}: eval at {iteration} differs by {diff}")
    for rank in range(WORLD_SIZE):
        missing = set(reference.evals[rank]) - {i for run in attempts for i in run.evals[rank]}
        if missing:
            outcome.problems.append(f"rank {rank}: evaluations at {sorted(missing)} never completed after the kills")
        expected = torch.load(os.path.join(ref_dir, f"final_rank{rank}.pt"), weights_only=True)
        actual = torch.load(os.path.join(final_dir, f"final_rank{rank}.pt"), weights_only=True)
        for name, value in expected.items():
            diff = (actual[name].double() - value.double()).abs().max().item()
            outcome.max_weight_diff = max(outcome.max_weight_diff, diff)
            if not torch.equal(actual[name], value):
                outcome.problems.append(f"rank {rank}: final weight {name} differs by {diff}")


# ----------------------------------------------------------------------------- planning
def plan_kills(config: Config, count: int, replaces: dict[tuple[int, int], int], rng: random.Random) -> list[Kill]:
    """``count`` kills in iteration order: one inside a save, one in an evaluation right after a
    save (when some iteration is both), the rest at random training steps."""
    saves = [i for i in range(config.save_interval, config.iterations + 1, config.save_interval)]
    both = [i for i in saves if i % config.eval_interval == 0 and i < config.iterations]
    kills = []
    if both and count >= 1:
        kills.append(Kill("eval", rng.choice(both), rank=rng.randrange(WORLD_SIZE)))
    if count >= 2 or not both:
        iteration, rank = rng.choice(saves), rng.randrange(WORLD_SIZE)
        kills.append(Kill("save", iteration, rank=rank, replace=rng.randrange(replaces[rank, iteration])))
    while len(kills) < count:
        kills.append(Kill("step", rng.randint(2, config.iterations), delay=rng.uniform(0.0, 0.5)))
    # A save kill before an eval kill of the same iteration: the resumed run saves it again,
    # while a complete checkpoint of it would never be saved (nor killed in) again.
    order = {"save": 0, "eval": 1, "step": 2}
    return sorted(kills, key=lambda k: (k.iteration, order[k.kind]))


def run_config(name: str, kills: int, seed: int, workdir: str, timeout: float = 600) -> Outcome:
    """Run configuration ``name`` uninterrupted and with ``kills`` kills; compare the two."""
    config = CONFIGS[name]
    outcome = Outcome(name)
    if not available(config):
        outcome.skipped = f"this sat has no {config.requires} flag yet"
        return outcome
    eval_iters = int(BASE_ARGV[BASE_ARGV.index("--eval-iters") + 1])
    shutil.rmtree(workdir, ignore_errors=True)
    ref_dir = os.path.join(workdir, "reference")
    os.makedirs(ref_dir)
    code = _attempt(ref_dir, _argv(config, os.path.join(ref_dir, "checkpoints")), None, ref_dir, timeout)
    if code != 0:
        outcome.problems.append(f"the uninterrupted run failed with {code} (see {ref_dir}/log*.txt)")
        return outcome
    reference = _parse(os.path.join(ref_dir, "out"), eval_iters)
    outcome.kills = plan_kills(config, kills, reference.replaces, random.Random(f"{name}-{seed}"))

    save = os.path.join(workdir, "chaos", "checkpoints")
    attempts: list[Run] = []
    pending = list(outcome.kills)
    while True:
        attempt_dir = os.path.join(workdir, "chaos", f"attempt{len(attempts)}")
        os.makedirs(attempt_dir)
        argv = _argv(config, save)
        checkpoints = _experiment_dir(save)
        if os.path.isfile(os.path.join(checkpoints, "latest")):
            argv += ["--load", checkpoints]
        elif os.path.isdir(checkpoints):
            shutil.rmtree(checkpoints)  # killed before its first checkpoint: start again
        code = _attempt(attempt_dir, argv, pending[0] if pending else None, save, timeout)
        attempts.append(_parse(os.path.join(attempt_dir, "out"), eval_iters))
        if code is None:
            pending.pop(0)
            continue
        if code != 0:
            outcome.problems.append(f"attempt {len(attempts) - 1} failed with {code} (see {attempt_dir}/log*.txt)")
            return outcome
        outcome.problems += [f"the planned kill {kill} never fired" for kill in pending]
        break
    outcome.attempts = len(attempts)
    _compare(outcome, reference, attempts, os.path.join(ref_dir, "out"), os.path.join(attempt_dir, "out"))
    return outcome


def summary(outcome: Outcome) -> str:
    if outcome.skipped:
        return f"{outcome.config:12s} skipped: {outcome.skipped}"
    fired = [k for k in outcome.kills if k.done]
    during = sum(k.during_save for k in fired)
    kinds = ", ".join(f"{k.kind}@{k.iteration}" + (" (in save)" if k.during_save else "") for k in fired)
    return (
        f"{outcome.config:12s} {'OK' if outcome.ok else 'DIFFERS'}: {len(fired)} kills ({during} during a save: "
        f"{kinds}), {outcome.attempts} attempts; compared {outcome.compared_train_losses} training and "
        f"{outcome.compared_eval_losses} validation losses; max differences: training loss "
        f"{outcome.max_train_loss_diff:.3g}, validation loss {outcome.max_eval_loss_diff:.3g}, "
        f"final weights {outcome.max_weight_diff:.3g}" + "".join(f"\n    {p}" for p in outcome.problems[:10])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="a configuration (repeatable)")
    parser.add_argument("--all", action="store_true", help="every configuration but 'short'")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per configuration (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", default="chaos-runs", help="where the runs go (replaced per configuration)")
    parser.add_argument("--report", help="also write the outcomes as JSON to this file")
    parser.add_argument("--timeout", type=float, default=600, help="seconds an attempt may take")
    options = parser.parse_args(argv)
    if options.list:
        for name, config in CONFIGS.items():
            print(f"{name:12s} {' '.join(config.argv)}  ({config.iterations} iterations)")
        return 0
    names = [n for n in CONFIGS if n != "short"] if options.all else options.config
    if not names:
        parser.error("name a --config or pass --all")
    if options.kills < 1:
        parser.error("--kills must be at least 1")
    outcomes = []
    for name in names:
        outcome = run_config(name, options.kills, options.seed, os.path.join(options.workdir, name), options.timeout)
        print(summary(outcome), flush=True)
        outcomes.append(outcome)
    if options.report:
        with open(options.report, "w") as f:
            json.dump([{**asdict(o), "ok": o.ok} for o in outcomes], f, indent=1)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
