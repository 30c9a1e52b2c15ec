"""AnnealingLR: exact values of every decay style, lr_scale groups, auto warm-up, state round trip."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from sat.training.learning_rates import AnnealingLR, get_learning_rate_scheduler


def _optimizer(*scales: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": scale} for scale in scales or (1.0,)]
    return torch.optim.SGD(groups, lr=1.0)


def _lrs(style: str, steps: list[int], **kwargs) -> list[float]:
    scheduler = AnnealingLR(
        _optimizer(), start_lr=1.0, warmup_iter=10, num_iters=100, decay_style=style, auto_warmup_steps=0, **kwargs
    )
    values = []
    for n in steps:
        scheduler.step(n)
        values.append(scheduler.get_last_lr()[0])
    return values


STEPS = [0, 5, 10, 60, 110, 500]


def test_warmup_then_linear_decay_reaches_zero_and_never_goes_below():
    assert _lrs("linear", STEPS) == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_cosine_decays_to_decay_ratio():
    values = _lrs("cosine", STEPS, decay_ratio=0.1)
    assert values[:3] == [0.0, 0.5, 1.0]
    assert values[3] == pytest.approx(0.55, abs=1e-15)
    assert values[4:] == [pytest.approx(0.1, abs=1e-15)] * 2


def test_exponential_really_decays():
    values = _lrs("exponential", STEPS, decay_ratio=0.1)
    assert values[:3] == [0.0, 0.5, 1.0]
    assert values[3] == pytest.approx(math.sqrt(0.1), abs=1e-15)
    assert values[4:] == [pytest.approx(0.1, abs=1e-15)] * 2


def test_constant():
    assert _lrs("constant", STEPS) == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert _lrs(None, [60]) == [1.0]


def test_no_warmup_and_lr_scale_groups():
    optimizer = _optimizer(1.0, 0.1)
    scheduler = AnnealingLR(optimizer, 2.0, 0, 4, "linear", last_iter=0, auto_warmup_steps=0)
    assert scheduler.get_last_lr() == [1.5, pytest.approx(0.15)]
    scheduler.step()
    assert scheduler.num_iters == 2 and scheduler.get_last_lr() == [1.0, pytest.approx(0.1)]


def test_auto_warmup_caps_the_first_steps_after_last_iter():
    scheduler = AnnealingLR(
        _optimizer(), 1.0, 0, 100, "constant", last_iter=20, auto_warmup_steps=3, auto_warmup_rate=0.05
    )
    seen = [scheduler.get_last_lr()[0]]
    for _ in range(3):
        scheduler.step()
        seen.append(scheduler.get_last_lr()[0])
    assert seen == [0.05, 0.05, 0.05, 1.0]  # steps 21, 22, 23 capped; 24 free


def test_state_dict_round_trip_continues_identically():
    first = AnnealingLR(_optimizer(), 1e-3, 5, 50, "cosine", decay_ratio=0.2)  # auto warm-up on (default 50)
    for _ in range(17):
        first.step()
    other = AnnealingLR(_optimizer(), 9.0, 0, 7, "linear")
    other.load_state_dict(first.state_dict())
    assert other.get_last_lr() == first.get_last_lr()
    for _ in range(40):
        first.step()
        other.step()
        assert other.get_last_lr() == first.get_last_lr()
    with pytest.raises(KeyError, match="num_iters"):
        other.load_state_dict({"start_lr": 1.0})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decay_style="triangle"), "decay_style must be one of"),
        (dict(warmup_iter=200), "warmup_iter must be within"),
        (dict(num_iters=0), "num_iters must be positive"),
        (dict(decay_style="cosine", decay_ratio=0.0), "decay_ratio must be in"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    full = dict(start_lr=1.0, warmup_iter=1, num_iters=100, decay_style="linear") | kwargs
    with pytest.raises(ValueError, match=message):
        AnnealingLR(_optimizer(), **full)


def test_scheduler_from_args_positions_and_auto_warmup_by_mode():
    args = argparse.Namespace(
        lr=1.0, lr_decay_iters=None, train_iters=100, warmup=0.1, lr_decay_style="linear", lr_decay_ratio=0.1
    )
    args.mode = "pretrain"
    resumed = get_learning_rate_scheduler(_optimizer(), 60, args)
    assert resumed.get_last_lr() == [pytest.approx(0.49)]  # step 61: 1 - (61 - 10) / 100
    args.mode = "finetune"
    finetune = get_learning_rate_scheduler(_optimizer(), 0, args)
    assert finetune.get_last_lr() == [0.05]  # step 1 is capped at 5% ...
    for _ in range(99):
        finetune.step()
    assert finetune.get_last_lr() == [0.05]  # ... up to step 100
    finetune.step()
    assert finetune.get_last_lr() == [pytest.approx(0.09)]  # step 101
