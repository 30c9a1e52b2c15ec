"""``get_model``: build a model class from ``args`` in the dtype and on the device they ask for;
``get_meta_model``: the same on ``meta``, for a caller that supplies every weight."""

from __future__ import annotations

import inspect

import torch

from sat import mpu
from sat.helpers import print_all, print_rank0
from sat.runtime import assign_device, check_if_zero3, dtype_from_args


def get_model(args, model_cls: type[torch.nn.Module], **kwargs) -> torch.nn.Module:
    """Build ``model_cls(args)`` in the dtype ``args.fp16``/``args.bf16`` ask for, on
    ``args.device`` (a model built on ``meta`` stays there until loaded); under
    ZeRO-3 inside ``deepspeed.zero.Init``, so each rank holds only its partition."""
    print_rank0(f"building {model_cls.__name__} model ...")
    params_dtype = kwargs.pop("params_dtype", None)
    if params_dtype is None:
        params_dtype = dtype_from_args(args)
    if accepts_keyword(model_cls, "params_dtype"):
        kwargs["params_dtype"] = params_dtype
    if check_if_zero3(args):
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=args.deepspeed_config, **zero3_groups()):
            model = model_cls(args, **kwargs)
    else:
        model = model_cls(args, **kwargs)
    if mpu.get_data_parallel_rank() == 0:
        count = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # whole, if partitioned
        print_all(f" > number of parameters on model parallel rank {mpu.get_model_parallel_rank()}: {count}")
    model = model.to(params_dtype)
    device = assign_device(args)
    if not any(p.is_meta for p in model.parameters()):
        model = model.to(device)
    return model


def zero3_groups() -> dict:
    """What ``deepspeed.zero.Init`` needs to partition as the engine will (``deepspeed.initialize``
    with ``mpu=sat.mpu``): over the data-parallel group only. Over the world, as by default, a
    model-parallel rank would take rank 0's initial values of its shard and partition it with
    the other model-parallel ranks."""
    if not mpu.model_parallel_is_initialized():
        return {}
    return {"data_parallel_group": mpu.get_data_parallel_group(), "mpu": mpu}


def accepts_keyword(model_cls: type, name: str) -> bool:
    """Whether ``model_cls(...)`` takes keyword ``name``. User subclasses written as
    ``__init__(self, args, transformer=None)`` (the original's finetune examples) do not take
    ``params_dtype``; they are built in fp32 and cast, where the original raised a TypeError."""
    parameters = inspect.signature(model_cls.__init__).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def get_meta_model(args, model_cls: type[torch.nn.Module], **kwargs) -> torch.nn.Module:
    """``get_model`` with every weight on ``meta``: allocated by nobody, initialised by nobody,
    for a caller that then loads all of them (``from_pretrained``, ``sat.hf``, resharding), so
    the model never exists twice in memory. Mixins that create plain ``torch.nn`` modules follow
    the default device, which is ``meta`` here; the backbone asks ``building_on_meta``.
    Initialisers are skipped (``args.skip_init`` during the build): on ``meta`` they compute
    nothing, and their first call imports ``torch._dynamo`` (seconds in a fresh process)."""
    had_flag, flag = hasattr(args, "skip_init"), getattr(args, "skip_init", False)
    args.skip_init = True
    try:
        with torch.device("meta"):
            return get_model(args, model_cls, **kwargs)
    finally:
        if had_flag:
            args.skip_init = flag
        else:
            del args.skip_init


def building_on_meta() -> bool:
    """True inside ``get_meta_model`` (or any ``with torch.device("meta")`` block)."""
    return torch.get_default_device().type == "meta"
