"""Random-number state for model parallelism, and activation checkpointing.

Dropout inside a model-parallel region (on attention heads a rank owns) must differ between
model-parallel ranks, while dropout on replicated activations must agree. The tracker keeps a
second generator state, seeded per model-parallel rank, and ``fork()`` swaps it in. It works
on CPU as well as CUDA, and its states are saved in checkpoints so a resumed run continues
the same random stream.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
import torch.utils.checkpoint

from sat.mpu.initialize import get_model_parallel_rank, get_model_parallel_world_size

_MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"
_MODEL_PARALLEL_SEED_OFFSET = 2718


def _device_rng_state() -> torch.Tensor:
    return torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()


def _set_device_rng_state(state: torch.Tensor) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


class RNGStatesTracker:
    """Named random states of the compute device that can be swapped in with ``fork``."""

    def __init__(self) -> None:
        self.states: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.states = {}

    def get_states(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        """Create state ``name`` from ``seed`` without disturbing the current stream."""
        if name in self.states:
            raise ValueError(f"RNG state {name!r} already exists")
        current = _device_rng_state()
        if torch.cuda.is_available():
            torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        self.states[name] = _device_rng_state()
        _set_device_rng_state(current)

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        """Run the block with state ``name``, then store its advanced state and restore ours."""
        if name not in self.states:
            raise KeyError(f"RNG state {name!r} was never added (call model_parallel_cuda_manual_seed)")
        current = _device_rng_state()
        _set_device_rng_state(self.states[name])
        try:
            yield
        finally:
            self.states[name] = _device_rng_state()
            _set_device_rng_state(current)


_RNG_TRACKER = RNGStatesTracker()


def get_cuda_rng_tracker() -> RNGStatesTracker:
    """The process-wide tracker (named for compatibility; it serves CPU runs too)."""
    return _RNG_TRACKER


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seed the tracker's model-parallel state with ``seed + 2718 + model_parallel_rank``."""
    _RNG_TRACKER.reset()
    _RNG_TRACKER.add(_MODEL_PARALLEL_RNG_TRACKER_NAME, seed + _MODEL_PARALLEL_SEED_OFFSET + get_model_parallel_rank())


def model_parallel_dropout_context() -> contextlib.AbstractContextManager:
    """The context for dropout on model-parallel activations: the tracker's fork when model
    parallelism is on, nothing otherwise."""
    if get_model_parallel_world_size() > 1:
        if _MODEL_PARALLEL_RNG_TRACKER_NAME not in _RNG_TRACKER.states:
            model_parallel_cuda_manual_seed(torch.initial_seed() % (2**31))
        return _RNG_TRACKER.fork()
    return contextlib.nullcontext()


def _deepspeed_checkpointing_configured() -> bool:
    # Only look if DeepSpeed was imported by someone: importing it here would make every
    # checkpointed forward pay for it.
    ds = sys.modules.get("deepspeed")
    return ds is not None and ds.checkpointing.is_configured()


def checkpoint(function: Callable, *args):
    """Activation checkpointing: DeepSpeed's when the training run configured it, else
    ``torch.utils.checkpoint`` (non-reentrant). ``function`` takes and returns tensors.

    The recomputation replays the model-parallel tracker's random state too (both
    implementations restore only the CPU and CUDA generators), so dropout inside
    model-parallel regions draws the same masks as the forward pass.
    """
    returns_tuple: list[bool] = []
    function = _replaying_tracker(function, returns_tuple)
    if _deepspeed_checkpointing_configured():
        # DeepSpeed's checkpoint is reentrant: it back-propagates into the block only when an
        # input requires grad, which is not the case above frozen embeddings.
        if torch.is_grad_enabled() and not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            first = next((i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
            if first is not None:
                args = (*args[:first], args[first].detach().requires_grad_(), *args[first + 1 :])
        outputs = sys.modules["deepspeed"].checkpointing.checkpoint(function, *args)
        # DeepSpeed unwraps a one-tensor tuple; callers get what ``function`` returned.
        return (outputs,) if returns_tuple[0] and isinstance(outputs, torch.Tensor) else outputs
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)


def _replaying_tracker(function: Callable, returns_tuple: list[bool]) -> Callable:
    """``function``, where every call after the first runs with the tracker states the first
    call started from, and leaves the tracker as it found it. The first call appends to
    ``returns_tuple`` whether ``function`` returned a tuple."""
    first_states: dict[str, torch.Tensor] | None = None

    def run(*args):
        nonlocal first_states
        if first_states is None:
            first_states = _RNG_TRACKER.get_states()
            outputs = function(*args)
            returns_tuple.append(isinstance(outputs, tuple))
            return outputs
        current = _RNG_TRACKER.get_states()
        _RNG_TRACKER.set_states(first_states)
        try:
            return function(*args)
        finally:
            _RNG_TRACKER.set_states(current)

    return run
