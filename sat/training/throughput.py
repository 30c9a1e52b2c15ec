"""Tokens per second and model FLOPs utilisation (MFU) for the training log line.

Model FLOPs of one token (forward and backward, the PaLM paper's convention)::

    6 * P + 12 * L * h * s

``P`` parameters on this rank (embeddings included: the tied head is a matmul with the
embedding), ``L`` layers, ``h`` hidden size (divided by the model-parallel size: each rank
holds its share of the heads) and ``s`` the sequence length: ``6 P`` are the weight products
(2 forward, 4 backward), ``12 L h s`` the attention scores and the weighted sum. Activation
recomputation is not counted (this is MFU, not hardware FLOPs utilisation), nor is causal
masking (the full ``s x s`` products are counted, as usual).

MFU = model FLOPs per second / the device's peak: the dense 16-bit tensor peak of the GPU from
``PEAK_TFLOPS`` (an fp32 run is measured against it too), or on CPU a float32 matmul measured
once per process. An unknown GPU gets no MFU.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOPs, from the vendors' data sheets
# (SXM parts); the first name contained in the device's name wins, so longer names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("MI300X", 1307.0),
    ("MI250X", 383.0),
)


@functools.cache
def measured_cpu_matmul_flops(size: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of the best of ``repeats`` float32 ``[size, size]`` matmuls on this CPU, with the
    current torch thread count (measured once per process)."""
    # A generator of its own: drawing from the global one would shift the training's dropout
    # masks from the first log line on (a resumed run logs for the first time elsewhere).
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    a @ b  # warm-up: thread pool and BLAS buffers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def device_peak_flops(device: torch.device) -> float | None:
    """The peak FLOP/s MFU is measured against on ``device``, or ``None`` if unknown."""
    if device.type == "cpu":
        return measured_cpu_matmul_flops()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in name), None)
    return None


def model_flops_per_token(num_params: int, num_layers: int = 0, hidden_size: int = 0, seq_length: int = 0) -> float:
    """``6 * num_params + 12 * num_layers * hidden_size * seq_length`` (see the module docstring)."""
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_length


@dataclass(frozen=True)
class Throughput:
    """What one logging interval achieved: ``tokens_per_second`` per device and ``mfu`` (a
    fraction of the peak, ``None`` without a known peak)."""

    tokens_per_second: float
    mfu: float | None

    def describe(self) -> str:
        """The log line's part: ``1234.5 tokens/(s*GPU) | MFU 12.34%``."""
        text = f"{self.tokens_per_second:.1f} tokens/(s*GPU)"
        return text if self.mfu is None else f"{text} | MFU {100 * self.mfu:.2f}%"


class ThroughputMeter:
    """Counts the tokens and model FLOPs of every training forward of ``model`` (a forward
    pre-hook reading the ``[b, s]`` token ids: the first integer tensor among the positional
    inputs, else ``input_ids=``) until ``report`` turns them into a ``Throughput``.

    ``model_parallel_size`` ranks share each token: per device, the tokens count once per
    model-parallel group."""

    def __init__(self, model: torch.nn.Module, model_parallel_size: int = 1):
        self.model_parallel_size = model_parallel_size
        # This rank's share of the model (ZeRO-3 partitions record their whole size as ds_numel).
        self.num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        config = getattr(getattr(model, "transformer", None), "config", None)
        self.num_layers = config.num_layers if config is not None else 0
        self.hidden_size = config.hidden_size // model_parallel_size if config is not None else 0
        self.device = next(model.parameters()).device
        self.tokens = 0
        self.flops = 0.0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        ids = next((a for a in args if isinstance(a, torch.Tensor) and not a.is_floating_point()), None)
        ids = kwargs.get("input_ids") if ids is None else ids
        if ids is None or ids.dim() < 2:
            return
        per_token = model_flops_per_token(self.num_params, self.num_layers, self.hidden_size, ids.shape[1])
        self.tokens += ids.numel()
        self.flops += per_token * ids.numel()

    def report(self, seconds: float) -> Throughput | None:
        """The throughput of the tokens counted over the last ``seconds``, then start counting
        afresh; ``None`` if no token ids were seen."""
        tokens, flops = self.tokens, self.flops
        self.tokens, self.flops = 0, 0.0
        if tokens == 0 or seconds <= 0:
            return None
        peak = device_peak_flops(self.device)
        return Throughput(tokens / self.model_parallel_size / seconds, None if peak is None else flops / seconds / peak)

    def close(self) -> None:
        self._handle.remove()
