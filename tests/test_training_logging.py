"""Training logs: the original's iteration line, tensorboard scalars, the terminal-only
progress bar, wandb only when installed, and timers and memory reports without CUDA."""

from __future__ import annotations

import argparse
import io
import os
import sys

import pytest
import torch

from sat.training.deepspeed_training import _progress_bar, report_evaluate_metrics, report_iteration_metrics
from sat.training.throughput import Throughput
from sat.training.utils import Timers, get_sample_writer, init_wandb_writer, report_memory


def _args(**overrides) -> argparse.Namespace:
    values = dict(fp16=False, gradient_accumulation_steps=2, batch_size=4, model_parallel_size=1, wandb=False)
    return argparse.Namespace(**{**values, **overrides})


class _Scaler:
    cur_scale = 1024.0


def test_iteration_line_has_the_original_fields_in_order(sat_log):
    line = report_iteration_metrics(None, _Scaler(), 1e-4, 2.5, 12.5, 3, 10, _args(fp16=True), {"acc": 0.5}, skipped=1)
    assert line == (
        " iteration        3/      10 | elapsed time per iteration (ms): 12.5 | learning rate 1.000E-04 |"
        " total loss 2.500000E+00 | acc 5.000000E-01 | loss scale 1024.0 | skipped 1 |"
        " speed 38400.00 samples/(min*GPU)"  # 2 x 4 samples per 12.5 ms
    )
    assert line in sat_log.text
    plain = report_iteration_metrics(None, None, 1e-4, 2.5, 12.5, 3, 10, _args(), {})
    assert "loss scale" not in plain and "skipped" not in plain  # only with fp16 / skipped steps


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = get_sample_writer("run", base=str(tmp_path))
    for step, loss in ((5, 2.0), (10, 1.5)):
        report_iteration_metrics(writer, None, 1e-3, loss, 20.0, step, 10, _args(), {"acc": 0.25})
    report_evaluate_metrics(writer, "iteration 10", 1.25, 3.49, 10, _args(), {"acc": 0.75})
    writer.close()
    folder = tmp_path / "runs" / "run"
    assert os.listdir(folder)[0].startswith("events.out.tfevents")
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"Train/lr", "Train/train_loss", "Train/acc", "Train/valid_loss", "Train/valid_ppl"} <= set(
        events.Tags()["scalars"]
    )
    assert [(e.step, e.value) for e in events.Scalars("Train/train_loss")] == [(5, 2.0), (10, 1.5)]
    assert events.Scalars("Train/valid_acc")[0].value == 0.75


def test_progress_bar_only_on_a_terminal(monkeypatch):
    args = _args(train_iters=10, iteration=2)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress_bar(args) is None  # a log file or CI
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = _progress_bar(args)
    assert (bar.total, bar.n) == (10, 2)
    bar.close()


def test_wandb_is_needed_only_when_asked(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    report_iteration_metrics(None, None, 1e-4, 2.5, 12.5, 3, 10, _args(wandb=False), {})
    with pytest.raises(ImportError, match="--wandb needs the wandb package"):
        init_wandb_writer(_args(wandb=True, wandb_project_name="p", experiment_name="e", summary_dir=""))


def test_timers_and_memory_report_without_cuda(sat_log):
    timers = Timers()
    timers("forward").start()
    timers("forward").stop()
    assert timers("forward").elapsed(reset=False) > 0
    with pytest.raises(RuntimeError, match="not started"):
        timers("backward").stop()
    line = timers.log(["forward", "backward", "never started"], normalizer=2)
    assert line.startswith("time (ms) | forward: ") and "| backward: 0.00" in line and "never" not in line
    assert timers("forward").elapsed() == 0  # log reset it
    assert report_memory("after 1 iterations").startswith("after 1 iterations memory (MB) | peak resident: ")


def test_iteration_line_ends_with_tokens_per_second_and_mfu():
    throughput = Throughput(tokens_per_second=1234.56, mfu=0.1234)
    line = report_iteration_metrics(None, None, 1e-4, 2.5, 12.5, 3, 10, _args(), {}, throughput=throughput)
    assert line.endswith(" samples/(min*GPU) | 1234.6 tokens/(s*GPU) | MFU 12.34%")
    unknown_peak = report_iteration_metrics(
        None, None, 1e-4, 2.5, 12.5, 3, 10, _args(), {}, throughput=Throughput(9.0, None)
    )
    assert unknown_peak.endswith(" | 9.0 tokens/(s*GPU)")


def test_throughput_meter_counts_training_tokens_and_model_flops(monkeypatch):
    from sat.model import BaseModel
    from sat.training import throughput
    from tests.conftest import TINY

    model = BaseModel(BaseModel.get_args(**TINY))
    meter = throughput.ThroughputMeter(model, model_parallel_size=1)
    ids = torch.zeros(2, 10, dtype=torch.long)
    model.train()
    model(ids, ids, -1)
    model.eval()
    model(ids, ids, -1)  # evaluation is not counted
    assert throughput.measured_cpu_matmul_flops.__wrapped__(size=64, repeats=1) > 0  # FLOP/s of this CPU
    monkeypatch.setattr(throughput, "measured_cpu_matmul_flops", lambda: 1e9)
    result = meter.report(seconds=2.0)
    params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * params + 12 * TINY["num_layers"] * TINY["hidden_size"] * 10
    assert result == throughput.Throughput(tokens_per_second=10.0, mfu=20 * flops_per_token / 2.0 / 1e9)
    assert meter.report(seconds=1.0) is None  # counting starts afresh
    meter.close()
    model.train()
    model(ids, ids, -1)
    assert meter.tokens == 0
