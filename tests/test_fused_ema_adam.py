"""``sat.ops.FusedEmaAdam``: torch's Adam(W) step plus an EMA of the weights."""

from __future__ import annotations

import copy

import pytest
import torch

from sat.ops import FusedEmaAdam
from sat.training.deepspeed_training import build_optimizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> list[list[torch.Tensor]]:
    """The weights after each step, on a fixed regression batch."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history


@pytest.mark.parametrize("adam_w_mode", [True, False])
def test_steps_equal_torch_adam(adam_w_mode):
    ema_model, ref_model = _model(), _model()
    kwargs = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)
    ema = _train(ema_model, FusedEmaAdam(ema_model.parameters(), adam_w_mode=adam_w_mode, **kwargs))
    ref_class = torch.optim.AdamW if adam_w_mode else torch.optim.Adam
    ref = _train(ref_model, ref_class(ref_model.parameters(), **kwargs))
    for ours, theirs in zip(ema, ref):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("use_num_upates", [True, False])
def test_shadow_is_the_closed_form_average(use_num_upates):
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = FusedEmaAdam(model.parameters(), lr=1e-2, ema_decay=0.9, use_num_upates=use_num_upates)
    history = _train(model, optimizer, steps=4)
    decays = [min(0.9, (1 + n) / (10 + n)) if use_num_upates else 0.9 for n in range(1, 5)]
    for index, p in enumerate(model.parameters()):
        expected = start[index]
        for decay, weights in zip(decays, history):
            expected = decay * expected + (1 - decay) * weights[index]
        assert torch.allclose(optimizer.state[p]["shadow"], expected, atol=1e-7, rtol=0)
    assert optimizer.num_updates == (4 if use_num_upates else -1)


def test_copy_to_store_and_restore():
    model = _model()
    optimizer = FusedEmaAdam(model.parameters(), lr=1e-2, ema_decay=0.5)
    _train(model, optimizer, steps=2)
    trained = [p.detach().clone() for p in model.parameters()]
    optimizer.store(model.parameters())
    optimizer.copy_to()
    for p in model.parameters():
        assert torch.equal(p, optimizer.state[p]["shadow"])
    optimizer.restore(model.parameters())
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))


def test_state_dict_round_trips_with_the_shadow():
    model = _model()
    optimizer = FusedEmaAdam(model.parameters(), lr=1e-2)
    _train(model, optimizer, steps=1)
    clone = _model()
    reloaded = FusedEmaAdam(clone.parameters(), lr=1e-2)
    reloaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    first = next(clone.parameters())
    assert torch.equal(reloaded.state[first]["shadow"], optimizer.state[next(model.parameters())]["shadow"])


def test_resumed_run_continues_the_decay_warm_up():
    model = _model()
    optimizer = FusedEmaAdam(model.parameters(), lr=1e-2, ema_decay=0.99)
    _train(model, optimizer, steps=3)
    saved = copy.deepcopy(optimizer.state_dict())
    assert [group["num_updates"] for group in saved["param_groups"]] == [3]
    resumed = FusedEmaAdam(model.parameters(), lr=1e-2, ema_decay=0.99)
    resumed.load_state_dict(saved)
    assert resumed.num_updates == 3
    assert resumed.current_decay() == 5 / 14  # update 4: (1 + 4) / (10 + 4), not update 1's 2 / 11
    plain = torch.optim.Adam(model.parameters(), lr=1e-2).state_dict()  # no count: keep ours
    resumed.load_state_dict(plain)
    assert resumed.num_updates == 3


def test_groups_stepped_one_at_a_time_count_once_each():
    model = _model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    optimizer = FusedEmaAdam([{"params": first}, {"params": second}], lr=1e-2)
    x = torch.randn(4, 4)
    model(x).sum().backward()
    groups = optimizer.param_groups
    for group in groups:  # as DeepSpeed's ZeRO-1/2 step: one group in param_groups at a time
        optimizer.param_groups = [group]
        optimizer.step()
    optimizer.param_groups = groups
    assert [group["num_updates"] for group in groups] == [1, 1] and optimizer.num_updates == 1


def test_unsupported_options_are_named():
    with pytest.raises(ValueError, match="AMSGrad"):
        FusedEmaAdam(_model().parameters(), amsgrad=True)
    with pytest.raises(ValueError, match="bias_correction=False"):
        FusedEmaAdam(_model().parameters(), bias_correction=False)


def test_deepspeed_config_selects_it_as_the_originals_tests_do():
    # The optimizer section of the original's tests/deepspeed_test.json.
    config = {
        "optimizer": {"type": "sat.ops.FusedEmaAdam", "params": {"lr": 0.0002}},
        "zero_optimization": {"stage": 1},
    }
    model = _model()
    optimizer = build_optimizer([{"params": list(model.parameters())}], config)
    assert type(optimizer) is FusedEmaAdam and optimizer.param_groups[0]["lr"] == 0.0002
    assert "optimizer" not in config and config["zero_allow_untested_optimizer"] is True
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, optimizer, steps=1)
    assert not torch.equal(next(model.parameters()), before[0])
