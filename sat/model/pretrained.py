"""``from_pretrained``: find a checkpoint (local or downloaded), build its model, load it.

The caller passes the class (``BaseModel.from_pretrained`` its own, ``AutoModel`` the one
``model_config.json`` names), so this module needs neither the registry nor the zoo.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from functools import partial

import torch

from sat.arguments import overwrite_args_by_dict, update_args_with_file
from sat.checkpoint import (
    DtypeArg,
    is_hf_directory,
    load_checkpoint,
    model_config_path,
    resolve_dtype,
    saved_checkpoint_dtype,
    set_dtype_flags,
)
from sat.checkpoint.broadcast import share_from_rank0
from sat.helpers import gc_paused, print_rank0
from sat.model.build import get_meta_model, get_model
from sat.model.placement import DeviceMapArg, plan_placement
from sat.runtime import check_if_zero3, ensure_model_parallel, reset_model_parallel


def resolve_checkpoint_dir(name: str, home_path: str | None = None, url: str | None = None) -> str:
    """``name`` itself when it is a directory, else the downloaded copy of the pretrained model
    ``name`` (see ``sat.resources.auto_create``)."""
    if os.path.isdir(name):
        return name
    from sat.resources import auto_create

    return auto_create(name, path=home_path, url=url)


@gc_paused()
def load_pretrained(
    model_cls: type[torch.nn.Module] | None,
    name: str,
    args: argparse.Namespace | None = None,
    *,
    home_path: str | None = None,
    url: str | None = None,
    prefix: str = "",
    build_only: bool = False,
    use_node_group: bool = True,
    overwrite_args: dict | None = None,
    dtype: DtypeArg = None,
    device_map: DeviceMapArg = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
    **kwargs,
) -> tuple[torch.nn.Module, argparse.Namespace]:
    """Shared body of ``BaseModel.from_pretrained`` and ``AutoModel.from_pretrained``: build
    ``model_cls`` from the checkpoint ``name`` and load it. ``model_cls`` may be None only for a
    ``transformers`` directory, whose config says what to build. Returns ``(model, args)``.
    ``from_rank0=True`` (a keyword) in a multi-process run: only global rank 0 opens the
    checkpoint's files, the others build on ``meta`` and receive their part by collectives."""
    from_rank0 = rank0_loading_applies(kwargs.pop("from_rank0", False))
    if from_rank0:
        model_dir, file_args = share_from_rank0(partial(_sat_config_on_rank0, name, home_path, url))
    else:
        model_dir, file_args = resolve_checkpoint_dir(name, home_path, url), None
        if is_hf_directory(model_dir):
            placing = dict(dtype=dtype, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
            return _load_hf_directory(model_cls, model_dir, overwrite_args, build_only, placing)
    if model_cls is None:
        raise ValueError(f"load_pretrained needs the model class to build from the sat checkpoint {model_dir}")
    fill_defaults = args is None
    args = args if args is not None else argparse.Namespace()
    if file_args is None:
        args = update_args_with_file(args, model_config_path(model_dir))
    else:
        args = argparse.Namespace(**{**vars(args), **file_args})
    args = overwrite_args_by_dict(args, overwrite_args)
    if fill_defaults and hasattr(model_cls, "get_args"):
        for key, value in vars(model_cls.get_args()).items():
            if not hasattr(args, key):
                setattr(args, key, value)
    specific_iteration = kwargs.pop("specific_iteration", None)
    started = time.perf_counter()
    if build_only and device_map is not None:
        raise ValueError("build_only builds a randomly initialised model on args.device; device_map needs weights")

    # Loading may start torch.distributed (building never does), so that a script under
    # torchrun loads a model-parallel checkpoint with no set-up of its own, as with the original.
    # An explicit model_parallel_size in overwrite_args re-creates groups of another size (the
    # original's way to split or merge inside a job); the checkpoint is resharded as it loads.
    if "model_parallel_size" in (overwrite_args or {}):
        reset_model_parallel(args.model_parallel_size)
    else:
        _start_model_parallel(model_dir, getattr(args, "model_parallel_size", 1))
    # Build on the meta device and let the checkpoint's tensors become the weights: no random
    # initialisation, no second copy of the model in memory. Under ZeRO-3 each rank builds only
    # its partitions (deepspeed.zero.Init) and the checkpoint loads into them layer by layer.
    if dtype is not None:
        dtype = resolve_dtype(dtype, args, lambda: saved_checkpoint_dtype(model_dir, specific_iteration))
        set_dtype_flags(args, dtype)
        kwargs["params_dtype"] = dtype  # the meta model is built in it: tensors convert one by one
    build_args = copy.copy(args)
    build = get_model if build_only or check_if_zero3(args) else get_meta_model
    model = build(build_args, model_cls, **kwargs)
    args.device = build_args.device
    placement = plan_placement(model, device_map, max_memory, offload_folder)
    if not build_only:
        load_checkpoint(
            model, args, load_path=model_dir, prefix=prefix, specific_iteration=specific_iteration,
            from_rank0=from_rank0, destinations=placement.destinations() if placement else None,
        )  # fmt: skip
        if placement is not None:
            placement.dispatch(model)
        report_loaded(model, model_dir, time.perf_counter() - started)
    return model, args


def report_loaded(model: torch.nn.Module, source: str, seconds: float) -> None:
    """The one-line summary after a load: parameters, dtype, devices and time."""
    count = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    device_map = getattr(model, "device_map", None)
    devices = dict.fromkeys(device_map.values()) if device_map else sorted({str(p.device) for p in model.parameters()})
    print_rank0(
        f"loaded {type(model).__name__} from {source}: {count / 1e6:.1f}M parameters, {'/'.join(dtypes)}, "
        f"on {', '.join(map(str, devices))}, {seconds:.1f} s"
    )


def rank0_loading_applies(requested: bool) -> bool:
    """Whether ``from_rank0`` applies: asked for, in a running multi-process group (one process
    simply loads)."""
    if not requested:
        return False
    if not torch.distributed.is_initialized():
        if int(os.getenv("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "from_rank0=True needs torch.distributed started before from_pretrained (sat.get_args(), or "
                "torch.distributed.init_process_group); this run has WORLD_SIZE > 1 but no process group"
            )
        return False
    return torch.distributed.get_world_size() > 1


def _sat_config_on_rank0(name: str, home_path: str | None, url: str | None) -> tuple[str, dict]:
    """Rank 0's part of ``from_rank0``: the checkpoint directory and its ``model_config.json``
    as arguments (paths in it resolved as ``update_args_with_file`` resolves them)."""
    model_dir = resolve_checkpoint_dir(name, home_path, url)
    if is_hf_directory(model_dir):
        raise ValueError(
            f"from_rank0 loads sat checkpoints; {model_dir} is a transformers directory: convert it once "
            "(sat.hf.from_hf, then save_checkpoint) or load it without from_rank0"
        )
    return model_dir, vars(update_args_with_file(argparse.Namespace(), model_config_path(model_dir)))


def _start_model_parallel(model_dir: str, model_parallel_size: int) -> None:
    """``ensure_model_parallel`` for the checkpoint's size, with the way out when this run's
    processes cannot hold it."""
    try:
        ensure_model_parallel(model_parallel_size)
    except ValueError as e:
        raise ValueError(
            f"{model_dir} was saved with model_parallel_size={model_parallel_size}: {e}; or load it into this "
            "run's processes with overwrite_args={'model_parallel_size': <processes>} (1 for one process): the "
            "checkpoint is resharded as it loads"
        ) from None


def _load_hf_directory(model_cls, model_dir: str, overwrite_args: dict | None, build_only: bool, placing: dict):
    """``from_pretrained`` on a ``transformers`` directory: translate it with ``sat.hf``
    (``placing``: the ``dtype``, ``device_map``, ``max_memory`` and ``offload_folder`` to load with)."""
    from sat.hf import from_hf  # the one upward import: sat.hf builds on sat.model

    if build_only:
        raise ValueError(f"build_only is not supported for the transformers directory {model_dir}")
    model, args = from_hf(model_dir, **placing, **(overwrite_args or {}))
    if model_cls is not None and not isinstance(model, model_cls):
        raise TypeError(f"{model_dir} holds a {type(model).__name__}, not a {model_cls.__name__}")
    return model, args
