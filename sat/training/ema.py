"""The EMA weights of ``FusedEmaAdam`` in and out of the model, and their ``<iteration>-ema``
checkpoint (the original's ``update_ema_parameters_to_model`` / ``restore_ema_parameters_back``).

The average lives in the optimizer's state (``state[p]["shadow"]``). Without a DeepSpeed wrapper
(a plain loop, or an fp32 engine without ZeRO) those ``p`` are the model's parameters. Under a
wrapper (ZeRO stage 1/2, or fp16/bf16 without ZeRO) they are fp32 master copies, which the wrapper
copies into the model's weights after each step; pointing the masters at the averages for one
such copy puts the average in the model, and copying the untouched masters again takes it out.
"""

from __future__ import annotations

import os

import torch

from sat import mpu
from sat.checkpoint import DEFAULT_MAX_SHARD_SIZE, shard_path, unwrap_module, write_model_states
from sat.checkpoint.manifest import seal_directory
from sat.ops import FusedEmaAdam
from sat.runtime import barrier


def ema_checkpoint_tag(iteration: int) -> str:
    """The directory name of the EMA weights saved with checkpoint ``iteration``."""
    return f"{iteration}-ema"


def ema_optimizer_of(optimizer) -> FusedEmaAdam | None:
    """The ``FusedEmaAdam`` that is ``optimizer`` or that a DeepSpeed wrapper holds as
    ``optimizer.optimizer``; None for any other optimizer."""
    for candidate in (optimizer, getattr(optimizer, "optimizer", None)):
        if isinstance(candidate, FusedEmaAdam):
            return candidate
    return None


def _ema(optimizer) -> FusedEmaAdam:
    ema = ema_optimizer_of(optimizer)
    if ema is None:
        raise ValueError(f"{type(optimizer).__name__} keeps no EMA weights: the optimizer must be sat.ops.FusedEmaAdam")
    if ema is not optimizer and not any(all(hasattr(optimizer, a) for a in names) for names in _MASTER_COPIES):
        raise ValueError(
            f"EMA weights cannot be swapped into the model under {type(optimizer).__name__} (ZeRO stage 3 "
            "partitions them): use ZeRO stage 0, 1 or 2"
        )
    return ema


# What each DeepSpeed wrapper copies its fp32 masters into the model's weights with.
_MASTER_COPIES = (
    ("update_lp_params",),  # ZeRO-1/2 and the bf16 optimizer: copy their partition, all-gather
    ("fp32_groups", "fp16_groups"),  # fp16/bf16 without ZeRO: a master per weight
    ("fp32_groups_flat", "fp16_groups_flat"),  # fused fp16: flat buffers the weights are views of
)


def _masters_to_model(wrapper) -> None:
    if hasattr(wrapper, "update_lp_params"):
        wrapper.update_lp_params()
        return
    if hasattr(wrapper, "fp32_groups") and hasattr(wrapper, "fp16_groups"):
        pairs = [
            pair for masters, weights in zip(wrapper.fp32_groups, wrapper.fp16_groups) for pair in zip(masters, weights)
        ]
    else:
        pairs = list(zip(wrapper.fp32_groups_flat, wrapper.fp16_groups_flat))
    for master, weight in pairs:
        weight.data.copy_(master.data)


def _masters(ema: FusedEmaAdam) -> list[torch.Tensor]:
    return [p for group in ema.param_groups for p in group["params"]]


@torch.no_grad()
def update_ema_parameters_to_model(optimizer) -> None:
    """Put the EMA weights into the model's parameters; ``restore_ema_parameters_back`` undoes it.

    ``optimizer``: a ``FusedEmaAdam``, or the DeepSpeed wrapper around one (what
    ``deepspeed.initialize`` returns). A collective under data parallelism: every rank calls it.
    """
    ema = _ema(optimizer)
    masters = _masters(ema)
    ema.store(masters)
    ema.copy_to()
    if ema is not optimizer:
        _masters_to_model(optimizer)  # the masters, now the averages
        ema.restore(masters)


@torch.no_grad()
def restore_ema_parameters_back(optimizer) -> None:
    """Give the model back its trained weights after ``update_ema_parameters_to_model``."""
    ema = _ema(optimizer)
    if ema is optimizer:
        ema.restore(_masters(ema))
    else:
        _masters_to_model(optimizer)  # the untouched masters


def save_ema_weights(
    iteration_dir: str,
    model: torch.nn.Module,
    optimizer,
    state: dict | None = None,
    checkpoint_format: str = "pt",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """Write the EMA weights of ``model`` as ``iteration_dir/mp_rank_XX_model_states.pt`` (or,
    with ``checkpoint_format="safetensors"``, its safetensors files; the first data-parallel copy
    of each model-parallel rank writes), with ``state`` beside ``"module"``; the model keeps its
    trained weights. The directory is then sealed with a manifest (sizes and SHA-256 of its
    files), as an iteration directory is. Every rank must call it."""
    update_ema_parameters_to_model(optimizer)
    try:
        if mpu.get_data_parallel_rank() == 0:
            weights = {key: value.detach().cpu().clone() for key, value in unwrap_module(model).state_dict().items()}
            os.makedirs(iteration_dir, exist_ok=True)
            path = shard_path(iteration_dir, mpu.get_model_parallel_rank())
            write_model_states({"module": weights, **(state or {})}, path, checkpoint_format, max_shard_size)
    finally:
        restore_ema_parameters_back(optimizer)
    barrier()  # every model-parallel rank has written its file
    seal_directory(iteration_dir)
