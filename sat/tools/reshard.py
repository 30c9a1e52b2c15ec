"""Split or merge a checkpoint directory to a new model-parallel size, offline::

    python -m sat.tools.reshard SOURCE_DIR TARGET_DIR --model-parallel-size N [--import my.models]
        [--checkpoint-format pt|safetensors] [--max-shard-size 5GB]

Each partitioned parameter is merged from the saved shards and split again, one parameter at a
time, from memory-mapped files (``sat.mpu.reshard``); the model is built on ``meta`` only to
learn how each parameter is partitioned. The target is written in the source's format (``.pt``
or safetensors) unless ``--checkpoint-format`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os

from sat.arguments import update_args_with_file
from sat.checkpoint import (
    DEFAULT_MAX_SHARD_SIZE,
    FORMATS,
    MODEL_CONFIG,
    atomic_write_text,
    get_checkpoint_iteration,
    get_checkpoint_tracker_filename,
    model_config_path,
    read_checkpoint_file,
    saved_format,
    saved_model_parallel_size,
    shard_path,
    write_model_states,
)
from sat.model.auto import get_model_class
from sat.model.build import get_meta_model
from sat.mpu.reshard import partition_specs, reshard_tensor


def reshard_checkpoint(
    source: str,
    target: str,
    model_parallel_size: int,
    iteration: str | None = None,
    checkpoint_format: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """Write ``source`` (a sat checkpoint directory) to ``target`` with a new model-parallel size,
    in ``checkpoint_format`` (default: the source's; safetensors split past ``max_shard_size``)."""
    if iteration is None:
        number, release, _ = get_checkpoint_iteration(source)
        iteration = "release" if release else str(number)
    config_path = model_config_path(source)
    args = update_args_with_file(argparse.Namespace(), config_path)
    model_cls = get_model_class(args.model_class)
    args = argparse.Namespace(**{**vars(model_cls.get_args()), **vars(args)})
    args.model_parallel_size, args.device = 1, "cpu"
    specs = partition_specs(get_meta_model(args, model_cls))  # the full model on meta: shapes and specs only

    source_dir = os.path.join(source, iteration)
    checkpoint_format = checkpoint_format or saved_format(source_dir)
    sources = [read_checkpoint_file(shard_path(source_dir, r)) for r in range(saved_model_parallel_size(source_dir))]
    target_dir = os.path.join(target, iteration)
    os.makedirs(target_dir, exist_ok=True)
    modules = [{} for _ in range(model_parallel_size)]
    for key in sources[0]["module"]:
        shards = [s["module"][key] for s in sources]
        for rank, tensor in enumerate(reshard_tensor(shards, specs.get(key), model_parallel_size, key)):
            modules[rank][key] = tensor
    extras = {key: value for key, value in sources[0].items() if key != "module"}
    for rank, module in enumerate(modules):
        write_model_states(
            {**extras, "module": module}, shard_path(target_dir, rank), checkpoint_format, max_shard_size
        )
    with open(config_path) as f:
        config = json.load(f)
    config["model_parallel_size"] = model_parallel_size
    atomic_write_text(os.path.join(target, MODEL_CONFIG), json.dumps(config, indent=4))
    # Last: the new checkpoint is complete.
    atomic_write_text(get_checkpoint_tracker_filename(target), iteration)


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Split or merge a sat checkpoint to a new model-parallel size.")
    parser.add_argument("source", help="checkpoint directory (holding latest and model_config.json)")
    parser.add_argument("target", help="directory to write")
    parser.add_argument("--model-parallel-size", type=int, required=True)
    parser.add_argument("--iteration", default=None, help="default: the one in 'latest'")
    parser.add_argument("--checkpoint-format", choices=FORMATS, default=None, help="default: the source's format")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest safetensors shard")
    parser.add_argument("--import", dest="imports", nargs="*", default=[], help="modules defining model classes")
    options = parser.parse_args(argv)
    for module in options.imports:
        importlib.import_module(module)
    reshard_checkpoint(
        options.source,
        options.target,
        options.model_parallel_size,
        options.iteration,
        options.checkpoint_format,
        options.max_shard_size,
    )
    print(f"wrote {options.target} with model_parallel_size={options.model_parallel_size}")


if __name__ == "__main__":
    main()
