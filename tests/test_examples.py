"""The examples run and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_demo_trains_saves_and_reloads(tmp_path):
    out = _run("examples/demo.py", "--steps", "100", "--save", str(tmp_path))
    losses = [float(line.split("loss")[1].split()[0]) for line in out.splitlines() if "loss" in line]
    assert losses[0] > 3.0 and losses[-1] < 1.0
    assert sorted(os.listdir(tmp_path)) == ["100", "latest", "model_config.json"]
    assert "reloaded BaseModel with AutoModel.from_pretrained" in out
