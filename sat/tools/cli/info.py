"""``sat info PATH``: what a sat checkpoint or a ``transformers`` model directory holds, read from
its metadata and memory-mapped weight files (no weight is read; a sat checkpoint's model is built
on ``meta`` only, to learn its mixins and which weights are split across model-parallel shards)."""

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
  sat info ./llama-hf
"""


def register(subparsers) -> None:
    """Add ``info`` to ``subparsers``."""
    parser = add_command(
        subparsers, "info", run, "describe a sat checkpoint or a transformers directory", __doc__ + "\n" + EXAMPLE
    )
    parser.add_argument("path", help="a sat checkpoint directory or a transformers model directory")
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
    """The facts ``sat info`` prints about the sat checkpoint or ``transformers`` directory
    ``path``, as a JSON-ready dict."""
    from sat.checkpoint import is_hf_directory

    return describe_hf(path) if is_hf_directory(path) else describe_sat(path)


def describe_sat(path: str) -> dict:
    """``describe`` of a sat checkpoint."""
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
    return {
        "path": os.path.abspath(path),
        "format": "sat",
        "model_class": config.get("model_class"),
        "parameters": sum(dtypes.values()),
        "dtypes": dict(dtypes),
        "model_parallel_size": model_parallel_size,
        "latest": latest,
        "iterations": iterations(path),
        "mixins": {name: type(mixin).__name__ for name, mixin in meta.mixins.items()},
        "tokenizer": config.get("tokenizer_type"),
        "files": _files(path),
    }


def describe_hf(path: str) -> dict:
    """``describe`` of a ``transformers`` directory: its config, the sat class ``from_hf`` builds
    from it (``sat.hf``), and the stored weights (a tied weight the files leave out is not counted)."""
    from transformers import AutoConfig

    from sat.hf.convert import read_hf_weights

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    weights = read_hf_weights(path)
    dtypes: Counter[str] = Counter()
    for key in weights.keys():
        tensor = weights[key]
        dtypes[str(tensor.dtype).removeprefix("torch.")] += tensor.numel()
    tokenizer_config = os.path.join(path, "tokenizer_config.json")
    tokenizer = None
    if os.path.isfile(tokenizer_config):
        with open(tokenizer_config, encoding="utf-8") as f:
            tokenizer = json.load(f).get("tokenizer_class") or "tokenizer_config.json"
    elif os.path.isfile(os.path.join(path, "tokenizer.json")):
        tokenizer = "tokenizer.json"
    return {
        "path": os.path.abspath(path),
        "format": "transformers",
        "model_type": config.model_type,
        "architectures": getattr(config, "architectures", None) or [],
        "sat_class": _sat_class(config),
        "parameters": sum(dtypes.values()),
        "dtypes": dict(dtypes),
        "tokenizer": tokenizer,
        "files": _files(path),
    }


def _sat_class(config) -> str | None:
    """The sat class ``from_hf`` builds from ``config``; None where ``sat.hf`` has no family for it."""
    from sat.hf.family import families

    family = families().get(config.model_type)
    return family.sat_class_name(config) if family is not None else None


def _files(path: str) -> list[dict]:
    """Every file under ``path``: its path relative to it and its size, in path order."""
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            files.append({"path": os.path.relpath(full, path), "bytes": os.path.getsize(full)})
    return sorted(files, key=lambda entry: entry["path"])


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
    if facts["format"] == "transformers":
        print(f"transformers model:  {facts['model_type']} ({', '.join(facts['architectures']) or 'no architectures'})")
        translated = f"{facts['sat_class']} (sat.hf.from_hf, AutoModel.from_pretrained)"
        print(f"sat class:           {translated if facts['sat_class'] else 'none (sat.hf cannot translate it)'}")
    else:
        print(f"model class:         {facts['model_class']}")
    print(f"parameters:          {_size(facts['parameters'])} ({facts['parameters']:,})")
    print(f"dtypes:              {dtypes}")
    if facts["format"] == "sat":
        mixins = ", ".join(f"{name} ({cls})" for name, cls in facts["mixins"].items()) or "none"
        print(f"model-parallel size: {facts['model_parallel_size']}")
        print(f"iterations:          {', '.join(facts['iterations'])} (latest: {facts['latest']})")
        print(f"mixins:              {mixins}")
    print(f"tokenizer:           {facts['tokenizer'] or 'none recorded'}")
    print("files:")
    for entry in facts["files"]:
        print(f"  {_size(entry['bytes']):>8}B  {entry['path']}")
