"""The EMA weights of ``FusedEmaAdam`` in and out of the model, and their ``<iteration>-ema``
checkpoint (the original's ``update_ema_parameters_to_model`` / ``restore_ema_parameters_back``).

The average lives in the optimizer's state (``state[p]["shadow"]``). Without a DeepSpeed wrapper
(a plain loop, or an fp32 engine without ZeRO) those ``p`` are the model's parameters. Under ZeRO
stage 1/2 or the bf16 optimizer they are the fp32 master partitions: the wrapper's
``update_lp_params`` copies masters into the model's (low-precision) weights and all-gathers
them, so pointing the masters at the averages for that one call puts the average in the model.
"""

from __future__ import annotations

import os

import torch

from sat import mpu
from sat.checkpoint import atomic_torch_save, shard_path, unwrap_module
from sat.ops import FusedEmaAdam


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
    if ema is not optimizer and not hasattr(optimizer, "update_lp_params"):
        raise ValueError(
            f"EMA weights cannot be swapped into the model under {type(optimizer).__name__} (ZeRO stage 3): "
            "use ZeRO stage 0, 1 or 2"
        )
    return ema


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
        optimizer.update_lp_params()  # masters (now the averages) -> model weights, gathered
        ema.restore(masters)


@torch.no_grad()
def restore_ema_parameters_back(optimizer) -> None:
    """Give the model back its trained weights after ``update_ema_parameters_to_model``."""
    ema = _ema(optimizer)
    if ema is optimizer:
        ema.restore(_masters(ema))
    else:
        optimizer.update_lp_params()  # the untouched masters -> model weights


def save_ema_weights(iteration_dir: str, model: torch.nn.Module, optimizer, state: dict | None = None) -> None:
    """Write the EMA weights of ``model`` as ``iteration_dir/mp_rank_XX_model_states.pt`` (the
    first data-parallel copy of each model-parallel rank writes), with ``state`` beside
    ``"module"``; the model keeps its trained weights. Every rank must call it."""
    update_ema_parameters_to_model(optimizer)
    try:
        if mpu.get_data_parallel_rank() == 0:
            weights = {key: value.detach().cpu().clone() for key, value in unwrap_module(model).state_dict().items()}
            os.makedirs(iteration_dir, exist_ok=True)
            path = shard_path(iteration_dir, mpu.get_model_parallel_rank())
            atomic_torch_save({"module": weights, **(state or {})}, path)
    finally:
        restore_ema_parameters_back(optimizer)
