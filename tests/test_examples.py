"""The examples run and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sat.helpers import get_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv: str) -> str:
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_custom_mixin_example():
    out = _run("examples/custom_mixin.py")
    assert "alibi (ALiBiMixin.attention_fn, wraps) -> default" in out
    assert "invariant to position shift: 0.0e+00" in out
    assert "back to the original: True" in out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_demo_finetunes_packaged_bert_and_reports_accuracy(tmp_path):
    out = _run("examples/demo.py", "--work", str(tmp_path))
    steps = [line[:5] for line in out.splitlines() if line.startswith("[")]
    assert steps == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    before, after = re.search(r"(\d+\.\d)% before -> (\d+\.\d)% after", out).groups()
    assert float(before) < 50 and float(after) >= 90, out
    assert "reloaded ClassificationModel" in out and "with AutoModel.from_pretrained" in out
    assert "iteration       40/      40" in out  # training_main's log lines, passed through
    (experiment,) = [d for d in os.listdir(tmp_path / "checkpoints") if d != "runs"]
    assert experiment.startswith("topics-")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_gpt2_pretraining_example_learns_saves_and_samples(tmp_path):
    result = subprocess.run(
        ["examples/gpt2/pretrain.sh", str(tmp_path), "--train-iters", "20", "--log-interval", "5"],
        cwd=ROOT, env=_launch_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"total loss (\S+) \|", result.stdout + result.stderr)]
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0], losses
    assert "sample: 'The checkpoint" in result.stdout

    from sat.model import AutoModel, GPT2Model

    (experiment,) = [d for d in os.listdir(tmp_path / "checkpoints") if d != "runs"]
    model, args = AutoModel.from_pretrained(str(tmp_path / "checkpoints" / experiment))
    assert isinstance(model, GPT2Model) and args.vocab_size == 256 and args.num_layers == 4


@pytest.mark.slow
def test_vit_classification_example_trains_a_deit_on_generated_images(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/vit_classification/train.py", "--train-data", "train", "--valid-data", "valid",
         "--train-iters", "20", "--batch-size", "32", "--lr", "2e-3", "--log-interval", "5", "--eval-iters", "2",
         "--num-workers", "0", "--save", str(tmp_path / "checkpoints"), "--experiment-name", "tinted"],
        cwd=ROOT, env=_launch_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"total loss (\S+) \|", result.stdout + result.stderr)]
    assert len(losses) == 4 and losses[-1] < 0.2 * losses[0], losses
    before, after = re.search(r"(\d+\.\d)% before -> (\d+\.\d)% after", result.stdout).groups()
    assert float(before) < 50 and float(after) >= 95, result.stdout  # three classes: chance is 33%

    from sat.model import AutoModel, DeiTModel

    (experiment,) = [d for d in os.listdir(tmp_path / "checkpoints") if d != "runs"]
    model, args = AutoModel.from_pretrained(str(tmp_path / "checkpoints" / experiment))
    assert type(model) is DeiTModel and args.num_classes == 3 and args.image_size == [16, 16]


def _launch_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.update(PYTHON=sys.executable, MASTER_PORT=str(get_free_port()))
    return env
