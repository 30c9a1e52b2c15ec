"""Peak host memory and wall time of saving a GPT-2: sat checkpoints (.pt, safetensors in one
file or shards) and HF directories (``save_hf`` against the route through a ``transformers``
model, and ``transformers``' own ``save_pretrained``).

Each save runs in a fresh subprocess: the model is built and its weights copied into ordinary
memory first (so pages of a memory-mapped source do not count), then the peak-RSS counter is reset
(``/proc/self/clear_refs``) and the save runs. Peak = ``VmHWM`` after the save minus ``VmRSS``
before it: the memory the save itself adds to the model's.

    python bench/saving.py [--layers 12] [--hidden 768] [--repeats 1] [--output table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from common import emit, markdown_table  # noqa: E402
from loading import _status, _weights_bytes  # noqa: E402  (VmRSS/VmHWM, the weights' bytes)

SHARD = "200MB"
CASES = ["sat .pt", "sat safetensors", f"sat safetensors, {SHARD} shards", "save_hf", "to_hf + save_pretrained"]
CASES += ["transformers save_pretrained"]


def _save(case: str, source: str, target: str) -> None:
    """Build the model of ``source`` (an HF directory), make its weights resident, and save it as ``case`` says."""
    import torch
    from transformers import GPT2LMHeadModel  # imported before the clock starts, for every case

    from sat.hf import from_hf, save_hf, to_hf
    from sat.training.model_io import save_checkpoint

    if case == "transformers save_pretrained":
        model = GPT2LMHeadModel.from_pretrained(source)
    else:
        model, args = from_hf(source)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()  # resident, not mapped from the source file
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    if case.startswith("sat"):
        args.save = target
        args.checkpoint_format = "pt" if case == "sat .pt" else "safetensors"
        args.max_shard_size = SHARD if "shards" in case else "5GB"
        save_checkpoint(1, model, None, None, args)
    elif case == "save_hf":
        save_hf(model, target, max_shard_size=SHARD)
    elif case == "to_hf + save_pretrained":
        to_hf(model).save_pretrained(target, max_shard_size=SHARD)
    else:
        model.save_pretrained(target, max_shard_size=SHARD)
    print(json.dumps({"peak": _status("VmHWM") - before, "save_s": time.perf_counter() - start}))


def run_case(case: str, source: str, workdir: str) -> dict:
    target = os.path.join(workdir, "out")
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, os.path.abspath(__file__), "--child", case, source, target]
    env = {**os.environ, "SAT_LOGLEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "bytes": _weights_bytes(target)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _save(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=1, help="saves of each case (interleaved); medians shown")
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    options = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="sat-bench-saving-")
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        config = GPT2Config(n_layer=options.layers, n_embd=options.hidden, n_head=options.hidden // 64)
        source = os.path.join(workdir, "source")
        GPT2LMHeadModel(config).save_pretrained(source)
        results: dict[str, list[dict]] = {case: [] for case in CASES}
        for repeat in range(options.repeats):
            for case in CASES[:: 1 if repeat % 2 == 0 else -1]:
                results[case].append(run_case(case, source, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for case, runs in results.items():
        peak = max(r["peak"] for r in runs)
        size = runs[0]["bytes"]
        seconds = statistics.median(r["save_s"] for r in runs)
        rows.append([case, f"{size / 2**30:.2f}", f"{peak / 2**30:.2f}", f"{peak / size:.2f}", f"{seconds:.2f}"])
    table = markdown_table(["save", "written GiB", "extra peak GiB", "peak / written", "seconds"], rows)
    table += (
        f"\n\nGPT-2 {options.layers} x {options.hidden} fp32, fresh process per save, weights resident before it; "
        f"extra peak = VmHWM after the save - VmRSS before (the largest of {options.repeats}); seconds: median."
    )
    emit(table, options.output)


if __name__ == "__main__":
    main()
