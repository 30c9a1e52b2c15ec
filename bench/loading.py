"""Peak host memory and wall time of loading a ~1.5 GB fp32 GPT-2, sat vs transformers.

Each load runs in a fresh subprocess: imports first, then the peak-RSS counter is reset
(``/proc/self/clear_refs``), then ``from_pretrained`` (or ``sat.hf.from_hf`` of transformers'
directory) and one forward pass (the forward touches every weight, so memory-mapped pages count
too). Peak = ``VmHWM`` after the forward minus ``VmRSS`` before the call. The weights are
generated once (random GPT-2, 24 layers x 1024) into ``--workdir`` as a transformers directory,
one more with the head untied (which stores as many bytes as sat's checkpoints, whose GPT-2 has
its own ``lm_head``) and a sat checkpoint in both formats (``.pt`` and safetensors). Before each
load its files are dropped from the page cache and read once in order (``_cache``), so every load
starts from the page cache, none pays for the disk, and every file is cached the same way
whatever was done with it before; with ``--cold`` they are only dropped, and every load reads the
disk.

    python bench/loading.py [--repeats 3] [--workdir DIR] [--output table.md] [--cold]
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

# name: (loader, source directory, dtype asked for, device_map with max_memory)
CASES = {
    "sat .pt, fp32": ("sat", "sat_pt", None, False),
    "sat safetensors, fp32": ("sat", "sat_st", None, False),
    "transformers, fp32": ("hf", "hf", "float32", False),
    "sat.hf.from_hf of transformers' files, fp32": ("sat_hf", "hf", None, False),
    "sat .pt, fp32 -> bf16": ("sat", "sat_pt", "bfloat16", False),
    "sat safetensors, fp32 -> bf16": ("sat", "sat_st", "bfloat16", False),
    "transformers, fp32 -> bf16": ("hf", "hf", "bfloat16", False),
    "sat.hf.from_hf of transformers' files, fp32 -> bf16": ("sat_hf", "hf", "bfloat16", False),
    "transformers, fp32 -> bf16, head untied (sat's bytes)": ("hf", "hf_untied", "bfloat16", False),
    "sat safetensors, fp32, device_map='auto', cpu 512 MiB + disk": ("sat", "sat_st", None, True),
}
TOKENS = 16


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(loader: str, directory: str, dtype_name: str | None, offload: bool) -> None:
    """One load in this fresh process; prints its measurements as JSON."""
    import torch

    if loader == "sat":
        import sat.model.official  # noqa: F401  (the zoo, as transformers' class import below)
        from sat.model import AutoModel
    else:
        from transformers import GPT2LMHeadModel
    if loader == "sat_hf":
        from sat.hf import from_hf
        from sat.hf.family import families

        families()  # the translation tables' modules, imported first as transformers' model class is
    dtype = getattr(torch, dtype_name) if dtype_name else None
    ids = torch.arange(TOKENS)[None]  # [1, s]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    if offload:
        folder = tempfile.mkdtemp(prefix="sat-bench-offload-")
        placing = dict(device_map="auto", max_memory={"cpu": "512MiB"}, offload_folder=folder)
        model, _ = AutoModel.from_pretrained(directory, dtype=dtype, **placing)
    elif loader == "sat":
        model, _ = AutoModel.from_pretrained(directory, dtype=dtype)
    elif loader == "sat_hf":
        model, _ = from_hf(directory, dtype=dtype)
    else:
        model = GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).eval()
    loaded = time.perf_counter()
    peak_load = _status("VmHWM") - before
    with torch.no_grad():
        logits = model(ids, ids, -1)[0] if loader.startswith("sat") else model(ids).logits  # [1, s, vocab]
    forward = time.perf_counter()
    if offload:
        shutil.rmtree(folder)
    print(
        json.dumps(
            {
                "peak": _status("VmHWM") - before,
                "peak_load": peak_load,
                "load_s": loaded - start,
                "forward_s": forward - loaded,
                "dtype": str(next(model.parameters()).dtype),
                "logits_dtype": str(logits.dtype),
            }
        )
    )


def generate(workdir: str, layers: int, hidden: int) -> dict[str, str]:
    """The copies of one random GPT-2 in ``workdir`` (each made once); returns their directories:
    transformers' (head tied to the embedding), transformers' with the head saved as its own
    tensor (the bytes of sat's checkpoints), sat's ``.pt`` and sat's safetensors."""
    dirs = {name: os.path.join(workdir, name) for name in ("hf", "hf_untied", "sat_pt", "sat_st")}
    missing = [name for name, path in dirs.items() if not os.path.isdir(path)]
    if not missing:
        return dirs
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sat.hf import from_hf
    from sat.training.model_io import save_checkpoint

    if "hf" in missing:
        torch.manual_seed(0)
        config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=hidden // 64, n_positions=1024, vocab_size=50257)
        GPT2LMHeadModel(config).save_pretrained(dirs["hf"], max_shard_size="10GB")
    if "hf_untied" in missing:
        tied = GPT2LMHeadModel.from_pretrained(dirs["hf"])
        untied = GPT2LMHeadModel(GPT2Config(**{**tied.config.to_dict(), "tie_word_embeddings": False}))
        untied.load_state_dict({**tied.state_dict(), "lm_head.weight": tied.lm_head.weight.clone()})
        untied.save_pretrained(dirs["hf_untied"], max_shard_size="10GB")
    if {"sat_pt", "sat_st"} & set(missing):
        model, args = from_hf(dirs["hf"])
        for key, fmt in (("sat_pt", "pt"), ("sat_st", "safetensors")):
            args.save, args.checkpoint_format = dirs[key], fmt
            save_checkpoint(1, model, None, None, args)
    return dirs


def _files(directory: str) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]


def _weights_bytes(directory: str) -> int:
    return sum(os.path.getsize(p) for p in _files(directory) if p.endswith((".pt", ".safetensors")))


def _cache(directory: str, cold: bool) -> None:
    """Drop every file of ``directory`` from the page cache and, unless ``cold``, read it once in
    order. The kernel caches a file in folios whose size depends on how it was last read (a
    sequential read's readahead builds large ones, page-by-page access 4 KiB ones), and a
    memory-mapped load of a file cached in 4 KiB folios faults 9x as often: 0.2 s more for 1.5
    GiB on this VM. Reading what is already cached would keep whatever folios it has, so one case
    could be measured on small folios and another on large ones."""
    for path in _files(directory):
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while not cold and f.read(64 * 2**20):
                pass


def run_case(loader: str, directory: str, dtype: str | None, offload: bool, cold: bool) -> dict:
    _cache(directory, cold)
    command = [sys.executable, os.path.abspath(__file__), "--child", loader, directory, dtype or "", str(offload)]
    env = {**os.environ, "SAT_LOGLEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{loader} {directory} {dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] or None, sys.argv[5] == "True")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where the weights go (default: a temporary directory)")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="loads of each case (interleaved); medians shown")
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    parser.add_argument(
        "--cold", action="store_true", help="drop the files from the page cache before each load: it reads the disk"
    )
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sat-bench-loading-")
    dirs = generate(workdir, args.layers, args.hidden)
    results: dict[str, list[dict]] = {name: [] for name in CASES}
    for repeat in range(args.repeats):
        for name, (loader, source, dtype, offload) in list(CASES.items())[:: 1 if repeat % 2 == 0 else -1]:
            results[name].append(run_case(loader, dirs[source], dtype, offload, args.cold))
    rows = []
    for name, (_, source, _, _) in CASES.items():
        size = _weights_bytes(dirs[source])
        peak = max(r["peak"] for r in results[name])
        peak_load = max(r["peak_load"] for r in results[name])
        rows.append(
            [
                name,
                f"{size / 2**30:.2f}",
                f"{peak_load / 2**30:.2f} ({peak_load / size:.2f})",
                f"{peak / 2**30:.2f}",
                f"{peak / size:.2f}",
                f"{statistics.median(r['load_s'] for r in results[name]):.2f}",
                f"{statistics.median(r['forward_s'] for r in results[name]):.2f}",
                results[name][0]["dtype"].replace("torch.", ""),
            ]
        )
    headers = [
        "load",
        "file GiB",
        "peak after load GiB (/ file)",
        "peak GiB",
        "peak / file",
        "from_pretrained s",
        "first forward s",
        "dtype",
    ]
    table = markdown_table(headers, rows)
    table += (
        f"\n\nGPT-2 {args.layers} x {args.hidden}, fresh process per load; peak = VmHWM after the first forward - "
        f"VmRSS before the call (the largest of {args.repeats}; 'after load': before the forward); times are "
        f"medians of {args.repeats}; "
        + ("cold: each load read its files from the disk." if args.cold else "warm: each load found its files cached.")
    )
    emit(table, args.output)


if __name__ == "__main__":
    main()
