"""Changing the model-parallel size of a checkpoint: at load time or offline.

A checkpoint saved with model-parallel size ``a`` has one file per rank. For size ``b``, each
partitioned parameter (``sat.mpu.partition.partition_spec``) is merged from the ``a`` shards and
split into ``b``, one parameter at a time, from memory-mapped files: no rank ever holds the
whole model. Replicated parameters come from rank 0's file.

Offline::

    python -m sat.mpu.reshard SOURCE_DIR TARGET_DIR --model-parallel-size N [--import my.models]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
from collections.abc import Mapping

import torch

from sat.mpu.partition import Stride, merge_strided, partition_spec, split_strided

_SHARD = re.compile(r"mp_rank_(\d+)_model_states\.pt")

Spec = tuple[int, Stride] | None


def saved_model_parallel_size(iteration_dir: str) -> int:
    """How many model-parallel shards ``iteration_dir`` holds (``mp_rank_XX`` files)."""
    ranks = sorted(int(m.group(1)) for name in os.listdir(iteration_dir) if (m := _SHARD.fullmatch(name)))
    if not ranks or ranks != list(range(len(ranks))):
        raise FileNotFoundError(f"{iteration_dir} holds no complete set of mp_rank_XX_model_states.pt files: {ranks}")
    return len(ranks)


def shard_path(iteration_dir: str, rank: int) -> str:
    return os.path.join(iteration_dir, f"mp_rank_{rank:02d}_model_states.pt")


def partition_specs(module: torch.nn.Module) -> dict[str, Spec]:
    """Each state-dict key of ``module`` with its partition ``(dim, stride)`` or ``None``."""
    return {key: partition_spec(tensor) for key, tensor in module.state_dict(keep_vars=True).items()}


def reshard_tensor(shards: list[torch.Tensor], spec: Spec, size: int, key: str) -> list[torch.Tensor]:
    """The ``size`` new shards of one parameter from its old shards."""
    if spec is None:
        if any(shard.shape != shards[0].shape for shard in shards):
            raise ValueError(
                f"{key} has different shapes on different model-parallel ranks but is not marked as partitioned "
                "(sat.mpu.partition.mark_partitioned)"
            )
        return [shards[0]] * size
    dim, stride = spec
    return split_strided(merge_strided(shards, stride, dim), size, stride, dim)


def reshard_state(
    sources: list[Mapping[str, torch.Tensor]], specs: Mapping[str, Spec], size: int, rank: int
) -> dict[str, torch.Tensor]:
    """Model-parallel rank ``rank`` of ``size``'s state dict, from every old rank's state dict.
    Keys the model does not know are kept as in rank 0 (load reports them as unexpected)."""
    state = {}
    for key in sources[0]:
        shards = [source[key] for source in sources]
        state[key] = reshard_tensor(shards, specs.get(key), size, key)[rank] if key in specs else shards[0]
    return state


def reshard_checkpoint(source: str, target: str, model_parallel_size: int, iteration: str | None = None) -> None:
    """Write ``source`` (a sat checkpoint directory) to ``target`` with a new model-parallel size."""
    import sat.model.official  # noqa: F401  (registers the classes)
    from sat.arguments import update_args_with_file
    from sat.model import model_registry
    from sat.model.base_model import get_model
    from sat.training.model_io import (
        atomic_torch_save,
        atomic_write_text,
        get_checkpoint_iteration,
        read_checkpoint_file,
    )

    if iteration is None:
        number, release, _ = get_checkpoint_iteration(source)
        iteration = "release" if release else str(number)
    config_path = os.path.join(source, "model_config.json")
    args = update_args_with_file(argparse.Namespace(), config_path)
    model_cls = model_registry.get(args.model_class)
    args = argparse.Namespace(**{**vars(model_cls.get_args()), **vars(args)})
    args.model_parallel_size, args.skip_init, args.device = 1, True, "cpu"
    specs = partition_specs(get_model(args, model_cls))  # the full model on meta: shapes and specs only

    source_dir = os.path.join(source, iteration)
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
        atomic_torch_save({**extras, "module": module}, shard_path(target_dir, rank))
    with open(config_path) as f:
        config = json.load(f)
    config["model_parallel_size"] = model_parallel_size
    atomic_write_text(os.path.join(target, "model_config.json"), json.dumps(config, indent=4))
    atomic_write_text(os.path.join(target, "latest"), iteration)  # last: the new checkpoint is complete


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Split or merge a sat checkpoint to a new model-parallel size.")
    parser.add_argument("source", help="checkpoint directory (holding latest and model_config.json)")
    parser.add_argument("target", help="directory to write")
    parser.add_argument("--model-parallel-size", type=int, required=True)
    parser.add_argument("--iteration", default=None, help="default: the one in 'latest'")
    parser.add_argument("--import", dest="imports", nargs="*", default=[], help="modules defining model classes")
    options = parser.parse_args(argv)
    for module in options.imports:
        importlib.import_module(module)
    reshard_checkpoint(options.source, options.target, options.model_parallel_size, options.iteration)
    print(f"wrote {options.target} with model_parallel_size={options.model_parallel_size}")


if __name__ == "__main__":
    main()
