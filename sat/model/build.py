"""``get_model``: build a model class from ``args`` in the dtype and on the device they ask for."""

from __future__ import annotations

import torch

from sat import mpu
from sat.helpers import print_all, print_rank0
from sat.runtime import assign_device, check_if_zero3, dtype_from_args


def get_model(args, model_cls: type[torch.nn.Module], **kwargs) -> torch.nn.Module:
    """Build ``model_cls(args)`` in the dtype ``args.fp16``/``args.bf16`` ask for, on
    ``args.device`` (models built with ``skip_init`` stay on ``meta`` until loaded); under
    ZeRO-3 inside ``deepspeed.zero.Init``, so each rank holds only its partition."""
    print_rank0(f"building {model_cls.__name__} model ...")
    params_dtype = kwargs.pop("params_dtype", None)
    if params_dtype is None:
        params_dtype = dtype_from_args(args)
    if check_if_zero3(args):
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=args.deepspeed_config):
            model = model_cls(args, params_dtype=params_dtype, **kwargs)
    else:
        model = model_cls(args, params_dtype=params_dtype, **kwargs)
    if mpu.get_data_parallel_rank() == 0:
        count = sum(p.numel() for p in model.parameters())
        print_all(f" > number of parameters on model parallel rank {mpu.get_model_parallel_rank()}: {count}")
    model = model.to(params_dtype)
    device = assign_device(args)
    if not any(p.is_meta for p in model.parameters()):
        model = model.to(device)
    return model
