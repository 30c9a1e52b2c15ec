"""``sat info PATH``: what a sat checkpoint holds, read from its metadata and memory-mapped
weight files (the model is built on ``meta`` only, to learn its mixins and which weights are
split across model-parallel shards)."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from sat.tools.cli.common import add_command, add_import_option, import_modules
from sat.tools.cli.models import check_exists

EXAMPLE = """examples:
  sat info ./llama-sat
  sat info ./llama-sat --json
"""


def register(subparsers) -> None:
    """Add ``info`` to ``subparsers``."""
    parser = add_command(subparsers, "info", run, "describe a sat checkpoint", __doc__ + "\n" + EXAMPLE)
    parser.add_argument("path", help="a sat checkpoint directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add_import_option(parser)


def iterations(path: str) -> list[str]:
    """The iteration folders of ``path`` that hold model files, in numeric order."""
    from sat.checkpoint import saved_model_parallel_size

    found = []
    for name in os.listdir(path):
        folder = os.path.join(path, name)
        if os.path.isdir(folder) and not name.startswith("."):
            try:
                saved_model_parallel_size(folder)
            except FileNotFoundError:
                continue
            found.append(name)
    return sorted(found, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))


def describe(path: str) -> dict:
    """The facts ``sat info`` prints, as a JSON-ready dict."""
    import torch

    from sat.arguments import update_args_with_file
    from sat.checkpoint import (
        get_checkpoint_iteration,
        model_config_path,
        read_checkpoint_file,
        read_model_config,
        saved_model_parallel_size,
        shard_path,
    )
    from sat.model.auto import get_model_class
    from sat.model.build import get_meta_model
    from sat.mpu.reshard import partition_specs

    config = read_model_config(model_config_path(path))
    number, release, _ = get_checkpoint_iteration(path)
    latest = "release" if release else str(number)
    iteration_dir = os.path.join(path, latest)
    model_parallel_size = saved_model_parallel_size(iteration_dir)

    args = update_args_with_file(argparse.Namespace(), model_config_path(path))
    model_cls = get_model_class(args.model_class)
    args = argparse.Namespace(**{**vars(model_cls.get_args()), **vars(args)})
    args.model_parallel_size, args.device = 1, "cpu"
    meta = get_meta_model(args, model_cls)  # whole-model shapes, partition specs and mixins; no memory
    specs = partition_specs(meta)

    # Rank 0's file, memory-mapped: dtypes and shapes without reading the data. A weight split
    # across ranks counts model_parallel_size times its rank-0 slice; buffers do not count.
    module = read_checkpoint_file(shard_path(iteration_dir, 0))["module"]
    parameters = {name for name, _ in meta.named_parameters()}
    dtypes: Counter[str] = Counter()
    for key in module.keys():
        tensor = module[key]
        if key in parameters and isinstance(tensor, torch.Tensor):
            factor = model_parallel_size if specs.get(key) is not None else 1
            dtypes[str(tensor.dtype).removeprefix("torch.")] += tensor.numel() * factor
    files = []
    for root, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(root, name)
            files.append({"path": os.path.relpath(full, path), "bytes": os.path.getsize(full)})
    return {
        "path": os.path.abspath(path),
        "model_class": config.get("model_class"),
        "parameters": sum(dtypes.values()),
        "dtypes": dict(dtypes),
        "model_parallel_size": model_parallel_size,
        "latest": latest,
        "iterations": iterations(path),
        "mixins": {name: type(mixin).__name__ for name, mixin in meta.mixins.items()},
        "tokenizer": config.get("tokenizer_type"),
        "files": sorted(files, key=lambda entry: entry["path"]),
    }


def _size(count: float) -> str:
    for unit in ("", "K", "M", "G"):
        if count < 1000:
            return f"{count:.1f}{unit}" if unit else f"{int(count)}"
        count /= 1000
    return f"{count:.1f}T"


def run(options: argparse.Namespace) -> None:
    """Print the description of ``options.path``."""
    import_modules(options.imports)
    check_exists(options.path)
    facts = describe(options.path)
    if options.json:
        print(json.dumps(facts, indent=2))
        return
    dtypes = ", ".join(f"{name} {_size(count)}" for name, count in facts["dtypes"].items())
    mixins = ", ".join(f"{name} ({cls})" for name, cls in facts["mixins"].items()) or "none"
    print(f"model class:         {facts['model_class']}")
    print(f"parameters:          {_size(facts['parameters'])} ({facts['parameters']:,})")
    print(f"dtypes:              {dtypes}")
    print(f"model-parallel size: {facts['model_parallel_size']}")
    print(f"iterations:          {', '.join(facts['iterations'])} (latest: {facts['latest']})")
    print(f"mixins:              {mixins}")
    print(f"tokenizer:           {facts['tokenizer'] or 'none recorded'}")
    print("files:")
    for entry in facts["files"]:
        print(f"  {_size(entry['bytes']):>8}B  {entry['path']}")
