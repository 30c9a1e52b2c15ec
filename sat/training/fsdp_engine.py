"""PyTorch FSDP2 as ``training_main``'s second engine (``--engine fsdp``).

``setup_fsdp_engine`` shards the model with ``fully_shard``, each transformer layer first (its
parameters are gathered only while it runs), then the root (embeddings, final norm, mixins),
over the data-parallel ranks. Only global rank 0 builds real weights (``build_fsdp_model``);
the others build on ``meta`` and receive rank 0's tensors one layer at a time, right before
that layer is sharded, so no rank but 0 ever holds more than its shards plus one layer.

``FSDPEngine`` gives the training loop the DeepSpeed engine's surface (``backward``,
``step``, ``is_gradient_accumulation_boundary``, ``module``), with the DeepSpeed path's
optimizer and parameter groups (built from the same DeepSpeed config section), the loss
divided by the accumulation steps, gradients reduced (averaged over the ranks) only at the
accumulation boundary, and clipping to the config's ``gradient_clipping``. ``--bf16`` computes
in bf16 with fp32 sharded master weights and fp32 gradient reduction (``MixedPrecisionPolicy``).
Checkpoints: ``sat.training.fsdp_checkpointing``.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from sat.model.build import get_meta_model, get_model
from sat.runtime import assign_device, dtype_from_args, global_rank
from sat.training.deepspeed_training import build_optimizer, get_optimizer_param_groups
from sat.training.fsdp_checkpointing import load_fsdp_training_state, load_fsdp_weights, save_fsdp_checkpoint

__all__ = [
    "FSDPEngine",
    "build_fsdp_model",
    "load_fsdp_training_state",
    "load_fsdp_weights",
    "setup_fsdp_engine",
    "shard_model",
    "transformer_layers",
]

FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


class FSDPEngine(torch.nn.Module):
    """A ``fully_shard``-ed model and its optimizer behind the DeepSpeed engine's training calls.

    ``module`` is the sharded model itself (``fully_shard`` changes it in place); attributes the
    engine does not have are looked up on it, as on a DeepSpeed engine.
    """

    def __init__(self, module: torch.nn.Module, optimizer, args, gradient_clipping: float):
        super().__init__()
        self.module = module
        self.optimizer = optimizer
        self.gradient_accumulation_steps = args.gradient_accumulation_steps
        self.gradient_clipping = gradient_clipping
        self.precision = "bf16" if args.bf16 else "fp32"
        self.save_dtype = dtype_from_args(args)  # the dtype the DeepSpeed path saves the module in
        self.micro_steps = 0

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def is_gradient_accumulation_boundary(self) -> bool:
        """Whether the coming ``step`` updates the weights (DeepSpeed's micro-step count)."""
        return (self.micro_steps + 1) % self.gradient_accumulation_steps == 0

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` / accumulation steps; gradients are reduce-scattered over the
        ranks only on the last micro-step (before it they accumulate unsharded, in fp32)."""
        self.module.set_requires_gradient_sync(self.is_gradient_accumulation_boundary())
        (loss / self.gradient_accumulation_steps).backward()

    def step(self) -> None:
        """At the accumulation boundary: clip the gradient norm, step the optimizer, clear the
        gradients. Every micro-step counts."""
        if self.is_gradient_accumulation_boundary():
            if self.gradient_clipping > 0:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.gradient_clipping)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_steps += 1

    def full_states(self) -> tuple[dict, dict, dict]:
        """``(module, master, optimizer)`` state dicts, whole, on global rank 0's CPU (empty on
        the others; a collective). ``module`` is in the dtype the DeepSpeed path saves (bf16
        under ``--bf16``); ``master`` holds the fp32 weights the optimizer steps."""
        master = get_model_state_dict(self.module, options=FULL_ON_RANK0)
        module = {
            key: value.to(self.save_dtype) if value.is_floating_point() else value for key, value in master.items()
        }
        optimizer = get_optimizer_state_dict(self.module, self.optimizer, options=FULL_ON_RANK0)
        return module, master, optimizer

    def save_training_checkpoint(self, iteration: int, lr_scheduler, args, client_state: dict) -> None:
        """``save_checkpoint``'s FSDP branch (``sat.training.fsdp_checkpointing``)."""
        save_fsdp_checkpoint(iteration, self, lr_scheduler, args, client_state)


def build_fsdp_model(args, model_cls: type[torch.nn.Module] | torch.nn.Module) -> torch.nn.Module:
    """``training_main``'s model for ``--engine fsdp``: built for real on global rank 0 only,
    on ``meta`` elsewhere (``setup_fsdp_engine`` fills it from rank 0). A module instance is
    used as it is on every rank (rank 0's weights still win). Kept in fp32 under ``--bf16``:
    the sharded parameters are the master weights, the bf16 copies exist only while computing."""
    if not isinstance(model_cls, type):
        model = model_cls.to(assign_device(args))
    elif global_rank() == 0 or not dist.is_initialized() or dist.get_world_size() == 1:
        model = get_model(args, model_cls)
    else:
        model = get_meta_model(args, model_cls)
    return model.float()


def setup_fsdp_engine(args, model: torch.nn.Module) -> tuple[FSDPEngine, torch.optim.Optimizer]:
    """Freeze what the model marks untrainable, shard it (rank 0's weights reach every rank),
    and build the DeepSpeed path's optimizer on the shards. Returns ``(engine, optimizer)``."""
    if hasattr(model, "disable_untrainable_params"):
        model.disable_untrainable_params()
    # The groups by name: fully_shard replaces every parameter (and drops their attributes,
    # lr_scale and no_weight_decay, which decide the groups).
    names = {id(param): name for name, param in model.named_parameters()}
    groups = [
        {**group, "params": [names[id(p)] for p in group["params"]]} for group in get_optimizer_param_groups(model)
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    shard_model(model, args)
    sharded = dict(model.named_parameters())
    for group in groups:
        group["params"] = [sharded[name] for name in group["params"]]
    config = copy.deepcopy(args.deepspeed_config)
    optimizer = build_optimizer(groups, config)
    if optimizer is None:
        raise ValueError(
            f"--engine fsdp needs a torch optimizer: the DeepSpeed config's optimizer type "
            f"{args.deepspeed_config['optimizer']['type']!r} is DeepSpeed's own; use Adam, AdamW or SGD"
        )
    return FSDPEngine(model, optimizer, args, float(config.get("gradient_clipping", 0.0))), optimizer


def shard_model(model: torch.nn.Module, args) -> None:
    """``fully_shard`` each transformer layer, then the root, over all ranks; each part first
    receives rank 0's weights (where it is on ``meta``, it is allocated for them)."""
    device = assign_device(args)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if args.bf16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for layer in transformer_layers(model):
        _receive_from_rank0(layer, device)
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    _receive_from_rank0(model, device)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The backbone's layers (``model.transformer.layers``), each its own FSDP unit."""
    transformer = getattr(model, "transformer", None)
    layers = getattr(transformer, "layers", None)
    if layers is None:
        raise ValueError(
            f"--engine fsdp shards a sat model by its transformer layers; {type(model).__name__} has no "
            "transformer.layers"
        )
    return list(layers)


def _receive_from_rank0(module: torch.nn.Module, device: torch.device) -> None:
    """Every parameter and buffer of ``module`` not sharded yet gets rank 0's values (a
    broadcast per tensor, in the module's own order, which every rank shares); ``meta`` ones are
    allocated on ``device`` first. A tensor two submodules share arrives once and stays shared."""
    if dist.get_world_size() == 1:
        return
    received: dict[int, torch.Tensor] = {}
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for name, tensor in store.items():
                if tensor is None or isinstance(tensor, DTensor):
                    continue
                if id(tensor) in received:
                    store[name] = received[id(tensor)]
                    continue
                real = tensor
                if tensor.is_meta:
                    real = torch.empty_like(tensor, device=device)
                    if isinstance(tensor, torch.nn.Parameter):
                        real = torch.nn.Parameter(real, requires_grad=tensor.requires_grad)
                    store[name] = real
                dist.broadcast(real.data, src=0)
                received[id(tensor)] = real
