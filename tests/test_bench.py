"""The benchmark scripts in bench/ run end to end (tiny settings) and report what they claim:
a table with a ratio per row, and identical tokens from sat and transformers."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, script, *args], cwd=os.path.join(ROOT, "bench"), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_models_bench_reports_forward_and_train_step_ratios():
    rows = table_rows(run_bench("models.py", "--families", "gpt2", "llama", "--presets", "small", "--repeats", "2"))
    assert [(row[0], row[2]) for row in rows] == [
        ("gpt2", "forward"),
        ("gpt2", "train step"),
        ("llama", "forward"),
        ("llama", "train step"),
    ]
    for row in rows:
        assert float(row[5]) > 0


def test_generation_bench_gives_identical_tokens():
    args = ("--preset", "small", "--new-tokens", "8", "--batch", "1", "3", "--repeats", "2")
    rows = table_rows(run_bench("generation.py", *args))
    assert [(row[0], row[2]) for row in rows] == [("gpt2", "1"), ("gpt2", "3"), ("llama", "1"), ("llama", "3")]
    assert all(row[-1] == "True" for row in rows)


def test_linear_bench_covers_both_layouts():
    rows = table_rows(run_bench("linear.py", "--rows", "1", "8", "--repeats", "1"))
    assert [row[0] for row in rows] == ["1", "8"] and all(len(row) == 5 for row in rows)


def test_layers_bench_checks_equal_outputs_and_times_every_part():
    rows = table_rows(run_bench("layers.py", "--preset", "small", "--repeats", "2", "--warmup", "1"))
    parts = [(family, part, what) for family in ("gpt2", "llama") for part in ("attention", "mlp", "block")
             for what in ("forward", "forward + backward")]  # fmt: skip
    assert [tuple(row[:3]) for row in rows] == parts
    assert all(float(row[5]) > 0 for row in rows)


def test_steady_malloc_is_reported_and_can_be_turned_off():
    args = ("--families", "gpt2", "--presets", "small", "--repeats", "1", "--warmup", "0")
    assert "glibc malloc keeping freed memory" in run_bench("models.py", *args)
    system = run_bench("models.py", *args, "--system-malloc")
    assert "system malloc" in system and "keeping freed memory" not in system


def test_sat_gpt2_bench_decodes_the_same_tokens_as_transformers():
    args = ("--presets", "small", "--parts", "decode", "batched", "--new-tokens", "6", "--batched-new-tokens", "4")
    rows = table_rows(run_bench("sat_gpt2.py", *args, "--repeats", "1", "--warmup", "0", "--threads", "1"))
    assert [row[1] for row in rows] == ["greedy 6 tokens", "greedy 4 tokens"]
    assert all(row[-1] == "True" for row in rows)


def test_loading_bench_loads_every_case_in_the_dtype_asked_for(tmp_path):
    args = ("--layers", "1", "--hidden", "64", "--repeats", "1", "--workdir", str(tmp_path))
    rows = table_rows(run_bench("loading.py", *args))
    assert len(rows) == 10
    for row in rows:
        assert row[-1] == ("bfloat16" if "bf16" in row[0] else "float32"), row
        assert float(row[4]) > 0 and float(row[5]) > 0, row
