"""``training_main``: train any model with DeepSpeed (ZeRO 0-3), on CPUs (gloo) or GPUs (NCCL),
in one process or many.

Flow: name the experiment, build the data loaders, build (or move) the model, load ``--load``,
run ``init_function``, wrap the model in a DeepSpeed engine with a torch optimizer, then train:
every ``log_interval`` a log line, every ``save_interval`` a checkpoint, every
``eval_interval`` an evaluation, a final checkpoint and a test evaluation at the end. A
checkpoint holds everything a run needs to continue exactly (``sat.training.checkpointing``).

Callbacks (the original library's contracts):

- ``forward_step_function(data_iterator, model, args, timers)`` returns ``loss`` or
  ``(loss, {name: tensor})``. A metric equal to ``METRIC_NOT_AVAILABLE`` (``-100``) means "not
  available on this rank"; metrics whose names contain ``eval`` may be non-scalar and are not
  logged during training.
- ``create_dataset_function(path, args)`` returns a ``torch.utils.data.Dataset`` (or, with
  ``--iterable-dataset``, an ``IterableDataset``).
- ``handle_metrics_function(metrics)`` gets, on data-parallel rank 0, every evaluation metric
  gathered from all ranks (scalars stacked, others concatenated) and returns scalars.
- ``init_function(args, model)`` runs after ``--load`` and before the optimizer exists.
- ``collate_fn`` goes to the DataLoaders; ``forward_step_eval`` replaces the forward step in
  evaluation.

``train``, ``train_step``, ``evaluate`` and ``evaluate_and_print_results`` take these callbacks
as a ``TrainingCallbacks`` (``callbacks=``); the original library's ``hooks=`` dict is accepted
too (not to be confused with a model's hook table, ``model.hooks``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from functools import partial

import torch
import torch.distributed as dist

from sat import mpu
from sat.checkpoint import load_checkpoint, restore_rng_states, rng_states
from sat.checkpoint.recovery import choose_resume_iteration
from sat.data_utils import make_loaders
from sat.data_utils.samplers import DistributedBatchSampler
from sat.helpers import get_free_port, print_all, print_rank0
from sat.model.build import get_model
from sat.model.compile import compile_layers
from sat.ops.layernorm import NO_WD_MODULES
from sat.runtime import assign_device, initialize_distributed, set_random_seed
from sat.training.checkpointing import (
    load_training_state,
    lock_save_directory,
    release_save_directory,
    save_checkpoint,
    use_safe_checkpoint_engine,
)
from sat.training.learning_rates import AnnealingLR, get_learning_rate_scheduler
from sat.training.throughput import Throughput, ThroughputMeter
from sat.training.utils import Timers, get_sample_writer, init_wandb_writer, log_scalars, print_args, report_memory

# Training stops with an error after this many non-finite micro-batches in a row.
MAX_CONSECUTIVE_SKIPPED = 100
# A metric value meaning "not available on this rank" (the original library's sentinel): a
# forward step returns it for a metric it cannot compute on its batch; the training logs average
# each metric over the ranks and micro-batches that have it, and report this value when none has.
METRIC_NOT_AVAILABLE = -100
_TIMER_NAMES = ["forward", "backward", "allreduce", "optimizer", "batch generator", "data loader"]


@dataclass(frozen=True)
class TrainingCallbacks:
    """The user's functions that ``training_main`` passes down the training loop.

    The original library passes them as a dict named ``hooks`` (keys ``forward_step``,
    ``forward_step_eval``, ``handle_metrics``, ``init_function``, ``create_dataset_function``);
    ``from_hooks`` accepts that dict. ``forward_step_eval=None`` evaluates with ``forward_step``.
    """

    forward_step: Callable | None = None
    forward_step_eval: Callable | None = None
    handle_metrics: Callable | None = None
    init_function: Callable | None = None
    create_dataset_function: Callable | None = None

    @classmethod
    def from_hooks(cls, hooks: TrainingCallbacks | Mapping) -> TrainingCallbacks:
        """A ``TrainingCallbacks`` from the original's ``hooks`` dict (other keys are ignored, as
        the original ignores them), or ``hooks`` itself when it already is one."""
        if isinstance(hooks, cls):
            return hooks
        return cls(**{field.name: hooks.get(field.name) for field in fields(cls)})

    @property
    def eval_step(self) -> Callable | None:
        """The forward step used in evaluation."""
        return self.forward_step_eval if self.forward_step_eval is not None else self.forward_step


def _callbacks(function: str, callbacks, hooks) -> TrainingCallbacks:
    """``callbacks`` (a ``TrainingCallbacks`` or the original's dict) or the original's ``hooks=``."""
    if callbacks is not None and hooks is not None:
        raise TypeError(f"{function}() got both callbacks and hooks (the old name of callbacks): pass one")
    given = callbacks if callbacks is not None else hooks
    if given is None:
        raise TypeError(f"{function}() needs callbacks: a TrainingCallbacks with at least forward_step")
    return TrainingCallbacks.from_hooks(given)


def import_deepspeed():
    """``import deepspeed``, with a clear error when it is missing. On a CPU-only machine it
    also skips the shared-memory communication op DeepSpeed would JIT-compile at start-up
    (about 30 s and a C++ compiler): training all-reduces go through torch.distributed anyway."""
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
    except ImportError as e:
        raise ImportError(
            f"training needs DeepSpeed, which could not be imported ({e}). Install it with "
            "`pip install deepspeed` (or `pip install SwissArmyTransformer[train]`)."
        ) from e
    comm = importlib.import_module("deepspeed.comm.torch")  # not `import deepspeed.comm.torch as`: see below
    # (`deepspeed.comm` has an attribute named `torch`, so the `as` form would bind the torch package.)
    if get_accelerator().device_name() == "cpu" and hasattr(comm, "build_shm_op"):
        comm.build_shm_op = lambda: None
    return deepspeed


def training_main(
    args,
    model_cls,
    forward_step_function: Callable,
    create_dataset_function: Callable,
    handle_metrics_function: Callable | None = None,
    init_function: Callable | None = None,
    collate_fn: Callable | None = None,
    forward_step_eval: Callable | None = None,
):
    """Train ``model_cls`` (a model class, built with ``get_model(args, cls)``, or a module
    instance) as ``args`` say (``sat.get_args``) and return the model (the DeepSpeed engine
    when it trained). See the module docstring for the callbacks."""
    deepspeed = import_deepspeed()
    callbacks = TrainingCallbacks(
        forward_step=forward_step_function,
        forward_step_eval=forward_step_eval or forward_step_function,
        handle_metrics=handle_metrics_function,
        init_function=init_function,
        create_dataset_function=create_dataset_function,
    )
    timers = Timers()
    initialize_training_distributed(args, deepspeed)
    args.experiment_name = experiment_name(args)

    train_data, val_data, test_data = make_loaders(args, create_dataset_function, collate_fn=collate_fn)
    if args.epochs:
        if train_data is None:
            raise ValueError("--epochs needs --train-data")
        args.train_iters = len(train_data) // args.gradient_accumulation_steps
        if args.eval_interval is None:
            args.eval_interval = max(1, args.train_iters // args.epochs)
        if args.save_interval is None:
            args.save_interval = max(1, args.train_iters // args.epochs)

    fsdp = _fsdp_engine(args)
    if fsdp is not None:
        model = fsdp.build_fsdp_model(args, model_cls)
    else:
        model = get_model(args, model_cls) if isinstance(model_cls, type) else _to_device(model_cls, args)
    if args.save:
        args.summary_dir = args.summary_dir or args.save  # tensorboard runs next to the checkpoints
        args.save = os.path.join(args.save, args.experiment_name)
        lock_save_directory(args.save)
    resume_iteration = _resume_iteration(args)
    load = fsdp.load_fsdp_weights if fsdp is not None else load_checkpoint
    args.iteration = load(model, args, specific_iteration=resume_iteration) if args.load else 0
    dist.barrier()
    if getattr(args, "compile", False):
        compile_layers(model)  # after loading: the state dict is the same, the layers run compiled
    if callbacks.init_function is not None:
        callbacks.init_function(args, model)

    iteration, optimizer, lr_scheduler, streams = 0, None, None, {}
    if args.train_iters > 0 and args.do_train:
        setup = fsdp.setup_fsdp_engine if fsdp is not None else setup_model_untrainable_params_and_optimizer
        model, optimizer = setup(args, model)
        lr_scheduler = get_learning_rate_scheduler(optimizer, args.iteration, args)
        resumed = (
            (fsdp.load_fsdp_training_state if fsdp is not None else load_training_state)(
                model, lr_scheduler, args, iteration=resume_iteration
            )
            if args.load and args.mode == "pretrain"
            else {}
        )
        summary_writer = _start_summaries(args)
        streams = _data_streams(train_data, val_data, resumed, args)
        if resumed.get("eval_pending") and "valid" in streams:
            # The checkpoint was saved right before this iteration's evaluation (the original's
            # order), which the killed run may not have finished: evaluate now, from the saved
            # validation position, as the uninterrupted run did.
            _evaluate_at_iteration(model, streams["valid"], args, timers, summary_writer, callbacks)
        # The random streams start here: the seed for a new run, the saved states for a
        # resumed one, so it draws the same dropout masks as an uninterrupted run.
        if "rng" in resumed:
            restore_rng_states(resumed["rng"])
        else:
            set_random_seed(args.seed)
        print_rank0("Pretraining or continuing training the model..." if args.mode == "pretrain" else "Finetuning...")
        iteration, skipped = train(
            model,
            optimizer,
            lr_scheduler,
            streams["train"],
            streams.get("valid"),
            timers,
            args,
            summary_writer=summary_writer,
            callbacks=callbacks,
        )
        print_rank0(f"training done: {iteration} iterations, {skipped} micro-batches skipped (NaN/Inf)")
        if summary_writer is not None:
            summary_writer.close()

    if args.save and iteration != 0:
        save_checkpoint(iteration, model, optimizer, lr_scheduler, args, client_state=_positions(streams))
    if args.do_test and test_data is not None:
        eval_iters = len(test_data) if args.strict_eval else args.eval_iters
        evaluate_and_print_results(
            "the end of training for test data", iter(test_data), model, eval_iters, args, timers, True, "test",
            callbacks=callbacks,
        )  # fmt: skip
    release_save_directory()
    return model


def _fsdp_engine(args):
    """``sat.training.fsdp_engine`` for ``--engine fsdp``, else None (DeepSpeed). Imported here,
    not at the top: it builds on this module, and torch's FSDP loads only when asked for."""
    if getattr(args, "engine", "deepspeed") != "fsdp":
        return None
    return importlib.import_module("sat.training.fsdp_engine")


def _resume_iteration(args) -> int | None:
    """With ``--load`` in pretrain mode, the iteration to continue from: ``latest``'s when intact,
    else the newest intact one (``choose_resume_iteration``: warns, never silently); it is
    recorded in ``args.resumed_from`` so that ``--save-keep`` never deletes it. None otherwise."""
    if not args.load or args.mode != "pretrain":
        return None
    same = bool(args.save) and os.path.realpath(args.save) == os.path.realpath(args.load)
    iteration = choose_resume_iteration(args.load, writable=same)
    if iteration is not None:
        args.resumed_from = os.path.realpath(os.path.join(args.load, str(iteration)))
    return iteration


# ----------------------------------------------------------------------------- set-up
def initialize_training_distributed(args, deepspeed) -> None:
    """Start ``torch.distributed`` (from a launcher's environment, or as a one-process group
    when there is none) and DeepSpeed's communication on top of it."""
    if not dist.is_initialized():
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(get_free_port()))
        args.rank = int(os.environ["RANK"])
        args.world_size = int(os.environ["WORLD_SIZE"])
    initialize_distributed(args)
    deepspeed.init_distributed(dist_backend=args.distributed_backend, auto_mpi_discovery=False, verbose=False)


def experiment_name(args) -> str:
    """The load folder's name when continuing a run (``--load`` in pretrain mode), else
    ``<experiment-name>-MM-DD-HH-MM`` with rank 0's clock (all ranks must agree)."""
    if args.load and args.mode == "pretrain":
        return os.path.basename(os.path.normpath(args.load))
    stamp = [datetime.now().strftime("%m-%d-%H-%M")]
    if dist.is_initialized():
        dist.broadcast_object_list(stamp, src=0)
    return f"{args.experiment_name}-{stamp[0]}"


def _to_device(model: torch.nn.Module, args) -> torch.nn.Module:
    return model.to(assign_device(args))


def get_params_for_weight_decay_optimization(module: torch.nn.Module) -> list[dict]:
    """Optimizer groups of the trainable parameters: weight decay for most; none for norm
    layers, biases and parameters flagged ``no_weight_decay``; a separate group per
    ``lr_scale`` (the group's ``lr_scale`` multiplies the scheduled learning rate)."""
    decay: dict[float, dict] = {}
    no_decay: dict[float, dict] = {}
    seen: set[int] = set()
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is None or not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            skip_decay = (
                isinstance(owner, tuple(NO_WD_MODULES)) or name == "bias" or getattr(param, "no_weight_decay", False)
            )
            scale = float(getattr(param, "lr_scale", 1.0))
            groups = no_decay if skip_decay else decay
            if scale not in groups:
                groups[scale] = {"params": [], "lr_scale": scale, **({"weight_decay": 0.0} if skip_decay else {})}
            groups[scale]["params"].append(param)
    return [*decay.values(), *no_decay.values()]


def get_optimizer_param_groups(model: torch.nn.Module) -> list[dict]:
    """``get_params_for_weight_decay_optimization`` of the model (or of an engine's module)."""
    return get_params_for_weight_decay_optimization(model.module if hasattr(model, "module") else model)


def build_optimizer(param_groups: list[dict], config: dict):
    """The optimizer described by ``config["optimizer"]``, built here so that DeepSpeed compiles
    nothing: ``Adam``/``AdamW``/``SGD`` become torch optimizers, a type starting with ``sat.``
    is imported; the section is then removed from ``config``. Any other type is left to
    DeepSpeed (which may JIT-compile its fused op) and ``None`` is returned."""
    section = config.get("optimizer")
    if not section or "type" not in section:
        raise ValueError("the DeepSpeed config has no optimizer section with a 'type'; training needs one")
    kind = section["type"]
    params = dict(section.get("params", {}))
    lr = params.get("lr", 1e-3)
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if kind.startswith("sat."):
        module_name, _, class_name = kind.rpartition(".")
        optimizer = partial(getattr(importlib.import_module(module_name), class_name), **params)(param_groups)
    elif kind.lower() in ("adam", "adamw"):
        # DeepSpeed's "Adam" decouples weight decay (AdamW) unless adam_w_mode is false.
        decoupled = kind.lower() == "adamw" or params.get("adam_w_mode", True)
        allowed = ("lr", "betas", "eps", "weight_decay", "amsgrad")
        kwargs = {key: value for key, value in params.items() if key in allowed}
        optimizer = (torch.optim.AdamW if decoupled else torch.optim.Adam)(param_groups, **kwargs)
    elif kind.lower() == "sgd":
        allowed = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
        optimizer = torch.optim.SGD(param_groups, **{key: value for key, value in params.items() if key in allowed})
    else:
        return None
    del config["optimizer"]
    config.setdefault("zero_allow_untested_optimizer", True)  # a torch optimizer under ZeRO
    return optimizer


def _check_precision(config: dict) -> None:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if config.get("fp16", {}).get("enabled", False) and not accelerator.is_fp16_supported():
        raise ValueError(
            f"--fp16 is not supported on this device ({accelerator.device_name()}); use --bf16 or fp32 instead"
        )
    if config.get("bf16", {}).get("enabled", False) and not accelerator.is_bf16_supported():
        raise ValueError(f"--bf16 is not supported on this device ({accelerator.device_name()}); use fp32")


def setup_model_untrainable_params_and_optimizer(args, model: torch.nn.Module, config_params: dict | None = None):
    """Freeze what the model marks untrainable, build the parameter groups and the optimizer,
    and wrap the model in a DeepSpeed engine. Returns ``(engine, optimizer)``."""
    deepspeed = import_deepspeed()
    if not getattr(args, "deepspeed", False):
        raise ValueError("training needs DeepSpeed: args.deepspeed is False (get_args sets it outside inference)")
    if hasattr(model, "disable_untrainable_params"):
        model.disable_untrainable_params()
    param_groups = get_optimizer_param_groups(model)
    if not param_groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    config = copy.deepcopy(config_params if config_params is not None else args.deepspeed_config)
    _check_precision(config)
    optimizer = build_optimizer(param_groups, config)
    model_parallel = mpu if mpu.model_parallel_is_initialized() else None
    if args.checkpoint_activations:
        deepspeed.checkpointing.configure(
            model_parallel, deepspeed_config=config if "activation_checkpointing" in config else None
        )
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups if optimizer is None else None,
        optimizer=optimizer,
        mpu=model_parallel,
        dist_init_required=False,
        config=config,
    )
    use_safe_checkpoint_engine(engine)
    if engine.zero_optimization_stage() == 0 and mpu.get_data_parallel_world_size() == 1:
        # One data-parallel rank has nothing to average, yet the engine would still copy every
        # gradient into flat buffers, all-reduce them over the one rank and copy them back: a
        # measurable share of each step (bench/training.py). ZeRO stages keep their own reduce.
        engine.enable_backward_allreduce = False
    return engine, optimizer


def _start_summaries(args):
    """Print the arguments and open the tensorboard writer (and wandb), on rank 0."""
    if dist.get_rank() != 0:
        return None
    print_args(args)
    writer = None
    if args.summary_dir:
        writer = get_sample_writer(args.experiment_name, base=args.summary_dir, iteration=args.iteration)
        print_rank0(f"tensorboard summaries in {writer.log_dir}")
    if args.wandb:
        init_wandb_writer(args)
    return writer


# ----------------------------------------------------------------------------- data positions
class BatchStream:
    """An iterator over a DataLoader that counts the batches drawn: the data position a
    checkpoint saves. ``position`` batches are skipped at the start (without reading them when
    the loader uses ``DistributedBatchSampler``; an iterable dataset is read and discarded)."""

    def __init__(self, loader, position: int = 0):
        self.loader = loader
        self.position = position
        sampler = getattr(loader, "batch_sampler", None)
        if isinstance(sampler, DistributedBatchSampler):
            sampler.start_iter = position % max(1, len(sampler))
            self._iterator = iter(loader)
        else:
            self._iterator = iter(loader)
            if position:
                print_rank0(f"resuming an iterable dataset: reading and discarding {position} batches")
                for _ in range(position):
                    next(self._iterator)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        batch = next(self._iterator)
        self.position += 1
        return batch


def _data_streams(train_data, val_data, resumed: dict, args) -> dict[str, BatchStream]:
    position = resumed.get("data_position")
    if position is None:
        # No saved position: the original's --resume-dataloader guess, else the beginning.
        start = args.iteration * args.gradient_accumulation_steps if args.resume_dataloader else 0
        position = {"train": start, "valid": 0}
    streams = {"train": BatchStream(train_data, position["train"])}
    if val_data is not None:
        streams["valid"] = BatchStream(val_data, position.get("valid", 0))
    return streams


def _positions(streams: dict[str, BatchStream]) -> dict:
    return {"data_position": {name: stream.position for name, stream in streams.items()}}


# ----------------------------------------------------------------------------- training loop
def train(
    model,
    optimizer,
    lr_scheduler: AnnealingLR,
    train_data,
    val_data,
    timers: Timers,
    args,
    summary_writer=None,
    callbacks: TrainingCallbacks | Mapping | None = None,
    *,
    hooks: Mapping | None = None,
) -> tuple[int, int]:
    """Run iterations until ``args.train_iters``; returns ``(iteration, skipped micro-batches)``.
    ``train_data``/``val_data`` are DataLoaders or ``BatchStream``s (whose positions the
    checkpoints record). ``callbacks``: a ``TrainingCallbacks`` (or the original's dict);
    ``hooks`` is its old name, still accepted."""
    callbacks = _callbacks("train", callbacks, hooks)
    train_stream = train_data if isinstance(train_data, BatchStream) else BatchStream(train_data)
    val_stream = val_data if val_data is None or isinstance(val_data, BatchStream) else BatchStream(val_data)
    streams = {"train": train_stream, **({"valid": val_stream} if val_stream is not None else {})}
    model.train()
    total_loss = 0.0
    total_metrics: dict[str, float] = defaultdict(float)
    total_metrics_count: dict[str, int] = defaultdict(int)
    skipped_total = skipped_since_log = 0
    report_memory_flag = True
    progress = _progress_bar(args)
    meter = ThroughputMeter(model.module if hasattr(model, "module") else model, args.model_parallel_size)
    timers("interval time").start()
    while args.iteration < args.train_iters:
        loss, skipped, metrics = train_step(
            train_stream, model, optimizer, lr_scheduler, args, timers, callbacks=callbacks
        )
        skipped_total += skipped
        skipped_since_log += skipped
        args.iteration += 1
        total_loss += loss
        for name, value in metrics.items():
            if value != METRIC_NOT_AVAILABLE:
                total_metrics[name] += value
                total_metrics_count[name] += 1
        if progress is not None:
            progress.update(1)

        if args.iteration % args.log_interval == 0:
            learning_rate = optimizer.param_groups[0]["lr"]
            average = {name: total_metrics[name] / total_metrics_count[name] for name in total_metrics}
            elapsed_ms = timers("interval time").elapsed() * 1000.0 / args.log_interval
            report_iteration_metrics(
                summary_writer, optimizer, learning_rate, total_loss / args.log_interval, elapsed_ms,
                args.iteration, args.train_iters, args, average, skipped=skipped_since_log,
                throughput=meter.report(elapsed_ms * args.log_interval / 1000.0),
            )  # fmt: skip
            if progress is not None:
                progress.set_postfix(loss=f"{total_loss / args.log_interval:.4f}", lr=f"{learning_rate:.2e}")
            total_loss, skipped_since_log = 0.0, 0
            total_metrics.clear()
            total_metrics_count.clear()
            if report_memory_flag:
                report_memory(f"after {args.iteration} iterations")
                report_memory_flag = False
            timers.log(_TIMER_NAMES, normalizer=args.log_interval)

        evaluating = bool(args.eval_interval and args.iteration % args.eval_interval == 0 and args.do_valid)
        if args.save and args.save_interval and args.iteration % args.save_interval == 0:
            # Saved before this iteration's evaluation, as the original does; the checkpoint
            # says so, and a run resumed from it evaluates first (training_main).
            state = {**_positions(streams), "eval_pending": evaluating and val_stream is not None}
            save_checkpoint(args.iteration, model, optimizer, lr_scheduler, args, client_state=state)

        if evaluating:
            _evaluate_at_iteration(model, val_stream, args, timers, summary_writer, callbacks)

        if args.exit_interval and args.iteration % args.exit_interval == 0:
            _exit_early(model, optimizer, lr_scheduler, args, streams, summary_writer)
    meter.close()
    if progress is not None:
        progress.close()
    return args.iteration, skipped_total


def _evaluate_at_iteration(model, val_stream, args, timers, summary_writer, callbacks) -> None:
    """The evaluation every ``eval_interval`` iterations: the whole validation loader with
    ``--strict-eval``, else the next ``eval_iters`` batches of ``val_stream``."""
    if args.strict_eval:
        eval_iterator, eval_iters = iter(val_stream.loader), len(val_stream.loader)
    else:
        eval_iterator, eval_iters = val_stream, args.eval_iters
    evaluate_and_print_results(
        f"iteration {args.iteration}", eval_iterator, model, eval_iters, args, timers, False, "val",
        step=args.iteration, summary_writer=summary_writer, callbacks=callbacks,
    )  # fmt: skip


def _progress_bar(args):
    """A tqdm bar on rank 0 when stderr is a terminal (never in logs or CI)."""
    if (dist.is_initialized() and dist.get_rank() != 0) or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=args.train_iters, initial=args.iteration, desc="training", dynamic_ncols=True)


def _exit_early(model, optimizer, lr_scheduler, args, streams, summary_writer) -> None:
    """``--exit-interval``: save (with ``--save``) and end the program on every rank."""
    if args.save:
        save_checkpoint(args.iteration, model, optimizer, lr_scheduler, args, client_state=_positions(streams))
    dist.barrier()
    print_all(f"{datetime.now():%Y-%m-%d %H:%M:%S} | exiting the program at iteration {args.iteration}")
    if summary_writer is not None:
        summary_writer.close()
    sys.exit(0)


def _loss_and_metrics(result) -> tuple[torch.Tensor, dict]:
    if isinstance(result, tuple):
        loss, metrics = result
        return loss, dict(metrics)
    return result, {}


def _reduce_for_logging(loss: torch.Tensor, metrics: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and training metrics averaged over data-parallel ranks in one all-reduce
    (a metric averages over the ranks where it is not ``METRIC_NOT_AVAILABLE``; that value if none
    has it)."""
    names = [name for name in metrics if "eval" not in name]
    values = [loss.detach().float().reshape(())]
    for name in names:
        value = metrics[name].detach().float()
        if value.dim() != 0:
            raise ValueError(
                f"training metric {name!r} has shape {tuple(value.shape)}; only 'eval' metrics may be non-scalar"
            )
        available = (value != METRIC_NOT_AVAILABLE).float()
        values += [value * available, available]
    packed = torch.stack(values)
    dist.all_reduce(packed, group=mpu.get_data_parallel_group())
    reduced_loss = packed[0] / mpu.get_data_parallel_world_size()
    reduced = {}
    for i, name in enumerate(names):
        total, count = packed[1 + 2 * i], packed[2 + 2 * i]
        reduced[name] = total / count if count > 0 else torch.tensor(float(METRIC_NOT_AVAILABLE))
    return reduced_loss, reduced


def train_step(
    data_iterator, model, optimizer, lr_scheduler, args, timers, callbacks=None, single_step=False, *, hooks=None,
    **kwargs,
):  # fmt: skip
    """One iteration: micro-batches (forward, backward) up to the gradient-accumulation
    boundary, then the optimizer and scheduler step. Returns ``(mean loss, skipped, metrics)``:
    each metric averaged over the micro-batches where some rank had it (a metric no rank ever
    had, ``METRIC_NOT_AVAILABLE`` throughout, is left out).

    A micro-batch whose loss or metrics are NaN/Inf on any rank is dropped before its backward
    (DeepSpeed never sees it) and the next one is drawn instead; ``skipped`` counts them. An
    fp16 step the loss scaler rejects also counts, and does not move the schedule.

    ``callbacks``: a ``TrainingCallbacks`` (or the original's dict) whose ``forward_step`` is
    called with ``**kwargs``; ``hooks`` is its old name, still accepted.
    """
    forward_step = _callbacks("train_step", callbacks, hooks).forward_step
    if forward_step is None:
        raise TypeError("train_step() needs callbacks.forward_step")
    losses: list[float] = []
    metric_sums: dict[str, float] = defaultdict(float)
    metric_counts: dict[str, int] = defaultdict(int)
    skipped = consecutive = 0
    while True:
        timers("forward").start()
        loss, metrics = _loss_and_metrics(forward_step(data_iterator, model, args, timers, **kwargs))
        timers("forward").stop()
        reduced_loss, reduced = _reduce_for_logging(loss, metrics)
        checked = torch.stack([reduced_loss, *reduced.values()])
        if not torch.isfinite(checked).all():
            skipped += 1
            consecutive += 1
            print_rank0(f"iteration {args.iteration + 1}: NaN or Inf in the loss or metrics; skipping the micro-batch")
            if consecutive >= MAX_CONSECUTIVE_SKIPPED:
                raise FloatingPointError(
                    f"the loss or metrics were NaN/Inf in {consecutive} consecutive micro-batches "
                    f"(iteration {args.iteration + 1}): training has diverged"
                )
            continue
        consecutive = 0
        losses.append(reduced_loss.item())
        for name, value in reduced.items():
            if value.item() != METRIC_NOT_AVAILABLE:
                metric_sums[name] += value.item()
                metric_counts[name] += 1

        timers("backward").start()
        model.backward(loss)
        timers("backward").stop()
        timers("optimizer").start()
        boundary = model.is_gradient_accumulation_boundary()
        model.step()
        timers("optimizer").stop()
        if boundary:
            if args.fp16 and getattr(optimizer, "overflow", False):
                skipped += 1
            else:
                lr_scheduler.step()
            break
        if single_step:
            break
    metrics_out = {name: metric_sums[name] / metric_counts[name] for name in metric_sums}
    return sum(losses) / len(losses), skipped, metrics_out


def report_iteration_metrics(
    summary_writer, optimizer, lr, loss, elapsed_time, step, total_step, args, avg_metrics, skipped: int = 0,
    throughput: Throughput | None = None,
) -> str:  # fmt: skip
    """Print the original's log line (rank 0), followed by tokens/s and MFU when ``throughput``
    is known (``sat.training.throughput``), and write the scalars; returns the line."""
    line = f" iteration {step:8d}/{total_step:8d} |"
    line += f" elapsed time per iteration (ms): {elapsed_time:.1f} |"
    line += f" learning rate {lr:.3E} |"
    line += f" total loss {loss:.6E} |"
    for key, value in avg_metrics.items():
        line += f" {key} {value:.6E} |"
    if args.fp16:
        line += f" loss scale {getattr(optimizer, 'cur_scale', getattr(optimizer, 'loss_scale', 1.0)):.1f} |"
    if skipped:
        line += f" skipped {skipped} |"
    samples = args.gradient_accumulation_steps * args.batch_size / args.model_parallel_size
    line += f" speed {samples / (elapsed_time / 60000.0):.2f} samples/(min*GPU)"
    if throughput is not None:
        line += f" | {throughput.describe()}"
    print_rank0(line)
    scalars = {"Train/lr": lr, "Train/train_loss": loss, "Train/elapsed_time": elapsed_time, "Train/skipped": skipped}
    if throughput is not None:
        scalars["Train/tokens_per_second"] = throughput.tokens_per_second
        if throughput.mfu is not None:
            scalars["Train/mfu"] = throughput.mfu
    scalars.update({f"Train/{key}": value for key, value in avg_metrics.items()})
    log_scalars(summary_writer, args, scalars, step)
    return line


# ----------------------------------------------------------------------------- evaluation
@contextlib.contextmanager
def _isolated_rng():
    """Evaluation must not move the training's random streams (a resumed run, which skips
    evaluations that already happened, would otherwise draw different dropout masks)."""
    saved = rng_states()
    try:
        yield
    finally:
        restore_rng_states(saved)


def _gather(value: torch.Tensor, rows: list[int], per_rank: int) -> list[torch.Tensor]:
    """``value`` from every data-parallel rank, keeping ``rows[r]`` rows of rank ``r``'s
    (scalars: kept when ``rows[r] > 0``). Non-scalars are padded to ``per_rank`` rows first."""
    group = mpu.get_data_parallel_group()
    if value.dim() > 0 and value.shape[0] < per_rank:
        pad = value.new_zeros((per_rank - value.shape[0], *value.shape[1:]))
        value = torch.cat([value, pad])
    gathered = [torch.empty_like(value) for _ in range(mpu.get_data_parallel_world_size())]
    dist.all_gather(gathered, value.contiguous(), group=group)
    if value.dim() == 0:
        return [g.cpu() for g, n in zip(gathered, rows) if n > 0]
    return [g[:n].cpu() for g, n in zip(gathered, rows) if n > 0]


def evaluate(
    data_iterator, model, eval_iters: int, args, timers, split: str, verbose=False, has_last=True, callbacks=None,
    *, hooks=None,
):  # fmt: skip
    """Run ``eval_iters`` batches without gradients. Returns ``(loss, metrics)``: the mean loss
    per sample over all data-parallel ranks, and (on data-parallel rank 0, else ``None``) the
    metrics, through ``callbacks.handle_metrics`` when given. With ``--strict-eval`` the
    placeholders in the last batch are dropped. ``callbacks``: a ``TrainingCallbacks`` (or the
    original's dict), evaluating with ``forward_step_eval`` (else ``forward_step``); ``hooks`` is
    its old name, still accepted."""
    callbacks = _callbacks("evaluate", callbacks, hooks)
    forward_step = callbacks.eval_step
    if forward_step is None:
        raise TypeError("evaluate() needs callbacks.forward_step_eval or callbacks.forward_step")
    model.eval()
    rank = mpu.get_data_parallel_rank()
    world = mpu.get_data_parallel_world_size()
    per_rank = getattr(args, "eval_batch_size", None) or args.batch_size
    last_shape = getattr(args, f"{split}_last_shape", None) or [per_rank] * world
    loss_sum, count = 0.0, 0
    gathered: dict[str, list[torch.Tensor]] = defaultdict(list)
    is_scalar: dict[str, bool] = {}
    with torch.no_grad():
        for i in range(eval_iters):
            if verbose and (i + 1) % args.log_interval == 0:
                print_rank0(f"evaluating iteration {i + 1}/{eval_iters}")
            loss, metrics = _loss_and_metrics(forward_step(data_iterator, model, args, timers))
            if getattr(args, "deepspeed_activation_checkpointing", False) and "deepspeed" in sys.modules:
                sys.modules["deepspeed"].checkpointing.reset()
            rows = last_shape if args.strict_eval and has_last and i == eval_iters - 1 else [per_rank] * world
            loss_sum += loss.detach().float().item() * rows[rank]
            count += rows[rank]
            for name, value in metrics.items():
                is_scalar[name] = value.dim() == 0
                gathered[name].extend(_gather(value.detach(), rows, per_rank))
    model.train()
    totals = torch.tensor([loss_sum, count], dtype=torch.float64)
    dist.all_reduce(totals, group=mpu.get_data_parallel_group())
    mean_loss = (totals[0] / totals[1]).item()
    if rank != 0:
        return mean_loss, None
    collected = {name: torch.stack(v) if is_scalar[name] else torch.cat(v) for name, v in gathered.items()}
    if callbacks.handle_metrics is not None:
        return mean_loss, callbacks.handle_metrics(collected)
    non_scalar = [name for name in collected if not is_scalar[name]]
    if non_scalar:
        raise ValueError(f"metrics {non_scalar} are not scalars: pass handle_metrics_function to reduce them")
    return mean_loss, {name: value.float().mean() for name, value in collected.items()}


def evaluate_and_print_results(
    prefix, data_iterator, model, eval_iters, args, timers, has_last, split, verbose=False, step=None,
    summary_writer=None, callbacks=None, *, hooks=None,
):  # fmt: skip
    """Evaluate (leaving the training's random streams untouched), print the loss, perplexity
    and metrics, and write them to the summaries. Returns the loss. ``callbacks`` as in
    ``evaluate`` (``hooks``: its old name)."""
    callbacks = _callbacks("evaluate_and_print_results", callbacks, hooks)
    with _isolated_rng():
        loss, metrics = evaluate(
            data_iterator, model, eval_iters, args, timers, split, verbose, has_last, callbacks=callbacks
        )
    if mpu.get_data_parallel_rank() == 0:
        report_evaluate_metrics(summary_writer, prefix, loss, math.exp(min(20.0, loss)), step, args, metrics, split)
    return loss


def report_evaluate_metrics(summary_writer, prefix, loss, ppl, step, args, avg_metrics, split: str = "val") -> str:
    """Print the evaluation line between rules (rank 0) and write the scalars; returns the line."""
    line = f" validation loss at {prefix} | loss: {loss:.6E} | PPL: {ppl:.6E}"
    for key, value in avg_metrics.items():
        line += f" {key} {float(value):.6E} |"
    rule = "-" * (len(line) + 1)
    print_rank0(f"{rule}\n{line}\n{rule}")
    tag = "valid" if split == "val" else split
    if step is not None:
        scalars = {f"Train/{tag}_ppl": ppl, f"Train/{tag}_loss": loss}
        scalars.update({f"Train/{tag}_{key}": float(value) for key, value in avg_metrics.items()})
        log_scalars(summary_writer, args, scalars, step)
    return line
