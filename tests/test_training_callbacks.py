"""The training loop's callbacks (``TrainingCallbacks``, the original's ``hooks`` dict) and the
"not available on this rank" metric sentinel, on 2 gloo processes with a stand-in engine."""

from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from distributed import run_workers

from sat.training.deepspeed_training import (
    METRIC_NOT_AVAILABLE,
    TrainingCallbacks,
    evaluate,
    evaluate_and_print_results,
    train,
    train_step,
)
from sat.training.utils import Timers


def test_the_sentinel_is_the_original_librarys_value():
    assert METRIC_NOT_AVAILABLE == -100


def test_callbacks_from_the_original_hooks_dict():
    def step(*a):
        return None

    def handle(m):
        return m

    callbacks = TrainingCallbacks.from_hooks({"forward_step": step, "handle_metrics": handle, "unrelated": 1})
    assert callbacks == TrainingCallbacks(forward_step=step, handle_metrics=handle)
    assert callbacks.eval_step is step  # no forward_step_eval: evaluation uses forward_step
    assert TrainingCallbacks(forward_step=step, forward_step_eval=handle).eval_step is handle
    assert TrainingCallbacks.from_hooks(callbacks) is callbacks
    with pytest.raises(dataclasses.FrozenInstanceError):
        callbacks.forward_step = handle


@pytest.mark.parametrize(
    "function, position",
    [(train, 8), (train_step, 6), (evaluate, 8), (evaluate_and_print_results, 11)],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_callbacks_take_the_old_hooks_position_and_hooks_stays_a_keyword(function, position):
    parameters = list(inspect.signature(function).parameters.values())
    assert parameters[position].name == "callbacks"  # where the original has `hooks`: positional calls work
    assert parameters[position].default is None
    hooks = inspect.signature(function).parameters["hooks"]
    assert hooks.kind is inspect.Parameter.KEYWORD_ONLY and hooks.default is None


def test_both_or_neither_is_an_error():
    args = SimpleNamespace(iteration=0, fp16=False)
    callbacks = TrainingCallbacks(forward_step=lambda *a: None)
    with pytest.raises(TypeError, match="both callbacks and hooks"):
        train_step(iter([]), None, None, None, args, Timers(), callbacks, hooks={"forward_step": print})
    with pytest.raises(TypeError, match="needs callbacks"):
        train_step(iter([]), None, None, None, args, Timers())
    with pytest.raises(TypeError, match="needs callbacks.forward_step_eval or callbacks.forward_step"):
        evaluate(iter([]), None, 1, args, Timers(), "val", hooks={"handle_metrics": print})


class _Engine:
    """What train_step and evaluate use of a DeepSpeed engine; 2 micro-batches per step."""

    def __init__(self):
        self.backward_losses: list[float] = []
        self.micro_batches = 0

    def backward(self, loss):
        self.backward_losses.append(loss.item())

    def is_gradient_accumulation_boundary(self):
        return self.micro_batches % 2 == 1

    def step(self):
        self.micro_batches += 1

    def train(self):
        pass

    def eval(self):
        pass


class _Scheduler:
    steps = 0

    def step(self):
        self.steps += 1


def _train_forward(data_iterator, model, args, timers, **kwargs):
    loss, acc = next(data_iterator)
    metrics = {"acc": torch.tensor(float(acc)), "never": torch.tensor(float(METRIC_NOT_AVAILABLE))}
    return torch.tensor(float(loss)) * kwargs.get("scale", 1.0), metrics


def _eval_forward(data_iterator, model, args, timers):
    value = next(data_iterator)
    return torch.tensor(value), {"acc": torch.tensor(value / 10)}


def _handle(metrics):
    return {"acc_max": metrics["acc"].max()}


def _callbacks_worker(rank: int, world: int) -> dict:
    na = METRIC_NOT_AVAILABLE
    # (loss, acc) of the two micro-batches: each micro-batch has acc on one rank only.
    batches = [(1.0, 0.5), (3.0, na)] if rank == 0 else [(2.0, na), (4.0, 0.9)]
    args = SimpleNamespace(iteration=0, fp16=False, strict_eval=False, batch_size=2, eval_batch_size=2, log_interval=1)
    callers = {
        "callbacks": lambda it, engine, sched: train_step(
            it, engine, None, sched, args, Timers(), callbacks=TrainingCallbacks(forward_step=_train_forward)
        ),
        "hooks": lambda it, engine, sched: train_step(
            it, engine, None, sched, args, Timers(), hooks={"forward_step": _train_forward, "forward_step_eval": None}
        ),
        "positional dict": lambda it, engine, sched: train_step(
            it, engine, None, sched, args, Timers(), {"forward_step": _train_forward}
        ),
        "kwargs to forward_step": lambda it, engine, sched: train_step(
            it, engine, None, sched, args, Timers(), callbacks=TrainingCallbacks(forward_step=_train_forward), scale=2.0
        ),
    }
    out = {}
    for name, call in callers.items():
        engine, scheduler = _Engine(), _Scheduler()
        loss, skipped, metrics = call(iter(batches), engine, scheduler)
        out[f"train {name}"] = (round(loss, 6), skipped, {k: round(v, 6) for k, v in metrics.items()})
        out[f"backward {name}"] = (engine.backward_losses, scheduler.steps)

    values = [1.0, 2.0] if rank == 0 else [3.0, 6.0]
    evaluations = {
        "callbacks": dict(callbacks=TrainingCallbacks(forward_step=print, forward_step_eval=_eval_forward)),
        "hooks": dict(hooks={"forward_step_eval": _eval_forward, "handle_metrics": _handle}),
        "eval falls back to forward_step": dict(callbacks=TrainingCallbacks(forward_step=_eval_forward)),
    }
    for name, kwargs in evaluations.items():
        loss, metrics = evaluate(iter(values), _Engine(), 2, args, Timers(), "val", **kwargs)
        out[f"eval {name}"] = (
            round(loss, 6),
            None if metrics is None else {k: round(v.item(), 6) for k, v in metrics.items()},
        )
    dist.barrier()
    return out


@pytest.mark.multiprocess
def test_train_step_and_evaluate_take_callbacks_or_the_old_hooks_and_skip_unavailable_metrics():
    rank0, rank1 = run_workers(_callbacks_worker, 2)
    # Loss: the mean over micro-batches of the rank average; acc: the mean over the ranks and
    # micro-batches that have it, (0.5 + 0.9) / 2; "never": no rank ever has it, so it is left out.
    expected = (2.5, 0, {"acc": 0.7})
    for result in (rank0, rank1):
        for name in ("callbacks", "hooks", "positional dict"):
            assert result[f"train {name}"] == expected, name
        assert result["train kwargs to forward_step"] == (5.0, 0, {"acc": 0.7})
    assert rank0["backward callbacks"] == ([1.0, 3.0], 1)  # this rank's own losses; one scheduler step
    assert rank1["backward hooks"] == ([2.0, 4.0], 1)
    assert rank0["backward kwargs to forward_step"] == ([2.0, 6.0], 1)
    # Evaluation: the mean loss per sample over both ranks, metrics on data-parallel rank 0 only,
    # through handle_metrics when given (the maximum), else averaged.
    assert rank0["eval callbacks"] == (3.0, {"acc": 0.3})
    assert rank0["eval hooks"] == (3.0, {"acc_max": 0.6})
    assert rank0["eval eval falls back to forward_step"] == (3.0, {"acc": 0.3})
    assert [rank1[f"eval {name}"][1] for name in ("callbacks", "hooks")] == [None, None]
