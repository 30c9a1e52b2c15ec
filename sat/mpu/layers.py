"""Model-parallel layers: the backbone's linear and embedding layers.

Their parameter shapes are always the sharded ones (at model-parallel size 1, the full ones),
so a checkpoint's layout is the same whether or not model parallelism is in use:

- ``ColumnParallelLinear``: ``weight [out / mp, in]``, output dimension split (strided for
  fused projections, see ``sat.mpu.partition``).
- ``RowParallelLinear``: ``weight [out, in / mp]``, input dimension split; bias not split.
- ``VocabParallelEmbedding``: ``weight [vocab / mp, hidden]``, vocabulary split.

Each layer initialises itself with ``init_method(weight, module=owner, name=name)`` on the
full weight and keeps its own shard, so the initial model is the same for every model-parallel
size given the same seed. With ``skip_init=True`` the parameters are left uninitialised (real
``torch.empty`` tensors, as in the original, so ``param.data = other.data`` fills them in);
``device=None`` follows the default device, so a build inside ``torch.device("meta")``
allocates nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from sat.mpu.initialize import get_model_parallel_rank, get_model_parallel_world_size
from sat.mpu.mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from sat.mpu.partition import Stride, mark_partitioned, mark_replicated, merge_strided, split_strided
from sat.mpu.utils import InitMethod, VocabUtility, divide, unscaled_init_method
from sat.ops.linear import linear


def _parameter(shape: tuple[int, ...], dtype: torch.dtype, device) -> Parameter:
    # Uninitialised: the layer initialises it unless skip_init, whose caller fills it in.
    return Parameter(torch.empty(shape, dtype=dtype, device=device))


class HeadInputs(NamedTuple):
    """What an output head was about to project: ``hidden [..., h]``, ``weight [vocab / mp, h]``
    and ``bias [vocab / mp]`` or ``None`` (the arguments of ``chunked_cross_entropy``)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


_logits_deferred: contextvars.ContextVar[bool] = contextvars.ContextVar("sat_logits_deferred", default=False)


@contextlib.contextmanager
def deferred_vocab_logits() -> Iterator[None]:
    """Make ``vocab_parallel_logits`` (every vocabulary head of the zoo) return ``HeadInputs``
    instead of logits while inside, so that a model's output is what its head would project and
    the loss can be computed from it a chunk at a time."""
    token = _logits_deferred.set(True)
    try:
        yield
    finally:
        _logits_deferred.reset(token)


def vocab_parallel_logits(
    hidden: torch.Tensor, weight: torch.Tensor, parallel_output: bool, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Project ``hidden [..., h]`` onto a vocabulary whose rows ``weight [vocab / mp, h]`` (and
    ``bias [vocab / mp]``, if any) are split across model-parallel ranks; the full
    ``[..., vocab]`` unless ``parallel_output``. Inside ``deferred_vocab_logits()``, the inputs
    as ``HeadInputs`` instead."""
    if _logits_deferred.get():
        return HeadInputs(hidden, weight, bias)
    logits = linear(copy_to_model_parallel_region(hidden), weight, bias)  # [..., vocab / mp]
    return logits if parallel_output else gather_from_model_parallel_region(logits)


class _ParallelLayer(torch.nn.Module):
    """Shared initialisation: build the full weight, initialise it, keep this rank's shard."""

    weight: Parameter
    bias: Parameter | None
    partition_dim: int
    stride: Stride

    def _set_init(self, init_method: InitMethod, module: torch.nn.Module | None, name: str | None) -> None:
        # Called later by reset_parameters; the owner is passed to custom init methods (T5
        # chooses std by module and parameter name). A closure, so the owner is not registered
        # as a submodule.
        self._init_weight = lambda tensor: init_method(tensor, module=module, name=name)

    def full_weight_shape(self) -> tuple[int, ...]:
        shape = list(self.weight.shape)
        shape[self.partition_dim] *= get_model_parallel_world_size()
        return tuple(shape)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise the weight from ``init_method`` and zero the bias."""
        world_size = get_model_parallel_world_size()
        if world_size == 1:
            self._init_weight(self.weight)
        else:
            full = torch.empty(self.full_weight_shape(), dtype=self.weight.dtype, device=self.weight.device)
            self._init_weight(full)
            shards = split_strided(full, world_size, self.stride, dim=self.partition_dim)
            self.weight.copy_(shards[get_model_parallel_rank()])
        if self.bias is not None:
            self.bias.zero_()


class ColumnParallelLinear(_ParallelLayer):
    """``Y = X A^T + b`` with ``A``'s output rows split across model-parallel ranks.

    Args:
        input_size: full input size of the layer.
        output_size: full output size of the layer.
        gather_output: all-gather the output so every rank sees all of it.
        stride: block layout of a fused weight (see ``sat.mpu.partition``).
        module: passed to ``init_method`` so custom inits can depend on it.
        name: passed to ``init_method`` with ``module``.
        skip_init: leave the parameters uninitialised (the caller fills them in).
    """

    partition_dim = 0

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = True,
        init_method: InitMethod = unscaled_init_method(0.02),
        stride: Stride = 1,
        keep_master_weight_for_test: bool = False,
        params_dtype: torch.dtype = torch.float,
        module: torch.nn.Module | None = None,
        name: str | None = None,
        skip_init: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.gather_output = gather_output
        self.stride = stride
        self.output_size_per_partition = divide(output_size, get_model_parallel_world_size())
        self.weight = _parameter((self.output_size_per_partition, input_size), params_dtype, device)
        self.bias = _parameter((self.output_size_per_partition,), params_dtype, device) if bias else None
        self._mark()
        self._set_init(init_method, module, name)
        if not skip_init:
            self.reset_parameters()
            if keep_master_weight_for_test:
                self.master_weight = self.weight.detach().clone()

    def _mark(self) -> None:
        mark_partitioned(self.weight, 0, self.stride)
        if self.bias is not None:
            mark_partitioned(self.bias, 0, self.stride)

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        return self.forward_with(input_, self.weight, self.bias)

    def forward_with(self, input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The forward with this rank's ``weight`` and ``bias`` given (quantized layers pass a
        dequantized weight)."""
        output = linear(copy_to_model_parallel_region(input_), weight, bias)  # [..., out / mp]
        return gather_from_model_parallel_region(output) if self.gather_output else output

    def partition(self, new_model_parallel_size: int | None = None, full_weight: torch.Tensor | None = None):
        """Split a full-size layer (or ``full_weight``) into shards. Returns the weight shards
        for ``full_weight``, else ``(weight_shards, bias_shards)``."""
        size = new_model_parallel_size or get_model_parallel_world_size()
        if full_weight is not None:
            return split_strided(full_weight, size, self.stride, dim=0)
        biases = [] if self.bias is None else split_strided(self.bias.detach(), size, self.stride, dim=0)
        return split_strided(self.weight.detach(), size, self.stride, dim=0), biases

    @torch.no_grad()
    def merge(self, new_weights: list[torch.Tensor], new_biases: list[torch.Tensor]) -> None:
        """Fill this full-size layer from every rank's shard."""
        self.weight.copy_(merge_strided(new_weights, self.stride, dim=0))
        if self.bias is not None:
            self.bias.copy_(merge_strided(new_biases, self.stride, dim=0))

    def repartition(self) -> None:
        """Turn this full-size layer into the current rank's shard."""
        weights, biases = self.partition()
        rank = get_model_parallel_rank()
        self.output_size_per_partition = weights[rank].shape[0]
        self.weight = Parameter(weights[rank])
        if self.bias is not None:
            self.bias = Parameter(biases[rank])
        self._mark()


class RowParallelLinear(_ParallelLayer):
    """``Y = X A^T + b`` with ``A``'s input columns split across model-parallel ranks; the
    partial products are summed with an all-reduce.

    Args:
        input_is_parallel: the input is already split (the output of a column-parallel layer).
        final_bias: add the bias after the all-reduce (the default). With ``False`` each rank
            adds ``bias / mp`` before it, which some checkpoints were trained with.
        stride: accepted for compatibility with the original's signature and unused: the
            input dimension of a row-parallel weight is always split in one block.
    """

    partition_dim = 1
    stride = 1

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        input_is_parallel: bool = False,
        init_method: InitMethod = unscaled_init_method(0.02),
        stride: Stride = 1,
        keep_master_weight_for_test: bool = False,
        params_dtype: torch.dtype = torch.float,
        module: torch.nn.Module | None = None,
        name: str | None = None,
        skip_init: bool = False,
        device: torch.device | str | None = None,
        final_bias: bool = True,
    ):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.input_is_parallel = input_is_parallel
        self.final_bias = final_bias
        self.input_size_per_partition = divide(input_size, get_model_parallel_world_size())
        self.weight = _parameter((output_size, self.input_size_per_partition), params_dtype, device)
        self.bias = _parameter((output_size,), params_dtype, device) if bias else None
        self._mark()
        self._set_init(init_method, module, name)
        if not skip_init:
            self.reset_parameters()
            if keep_master_weight_for_test:
                self.master_weight = self.weight.detach().clone()

    def _mark(self) -> None:
        mark_partitioned(self.weight, 1)
        if self.bias is not None:
            mark_replicated(self.bias)  # added once, after the partial products are summed

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        return self.forward_with(input_, self.weight, self.bias)

    def forward_with(self, input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The forward with this rank's ``weight`` and ``bias`` given (quantized layers pass a
        dequantized weight)."""
        world_size = get_model_parallel_world_size()
        if world_size == 1:
            return linear(input_, weight, bias)
        x = input_ if self.input_is_parallel else scatter_to_model_parallel_region(input_)
        if bias is not None and not self.final_bias:
            return reduce_from_model_parallel_region(linear(x, weight, bias / world_size))
        output = reduce_from_model_parallel_region(linear(x, weight))  # [..., out]
        return output if bias is None else output + bias

    def partition(self, new_model_parallel_size: int | None = None, full_weight: torch.Tensor | None = None):
        """Split a full-size layer (or ``full_weight``) into shards; the bias is replicated."""
        size = new_model_parallel_size or get_model_parallel_world_size()
        if full_weight is not None:
            return split_strided(full_weight, size, 1, dim=1)
        biases = [] if self.bias is None else [self.bias.detach().clone() for _ in range(size)]
        return split_strided(self.weight.detach(), size, 1, dim=1), biases

    @torch.no_grad()
    def merge(self, new_weights: list[torch.Tensor], new_biases: list[torch.Tensor]) -> None:
        """Fill this full-size layer from every rank's shard."""
        self.weight.copy_(merge_strided(new_weights, 1, dim=1))
        if self.bias is not None:
            self.bias.copy_(new_biases[0])

    def repartition(self) -> None:
        """Turn this full-size layer into the current rank's shard."""
        weights, _ = self.partition()
        self.weight = Parameter(weights[get_model_parallel_rank()])
        self.input_size_per_partition = self.weight.shape[1]
        self._mark()


class VocabParallelEmbedding(_ParallelLayer):
    """Token embedding with the vocabulary split across model-parallel ranks; each rank looks
    up the ids it holds and the results are summed."""

    partition_dim = 0
    stride = 1
    bias = None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        params_dtype: torch.dtype = torch.float,
        init_method: InitMethod = unscaled_init_method(0.02),
        skip_init: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self._set_vocab_range()
        self.weight = mark_partitioned(
            _parameter((self.num_embeddings_per_partition, embedding_dim), params_dtype, device), 0
        )
        self._set_init(init_method, None, None)
        if not skip_init:
            self.reset_parameters()

    def _set_vocab_range(self) -> None:
        self.vocab_start_index, self.vocab_end_index = VocabUtility.vocab_range_from_global_vocab_size(
            self.num_embeddings, get_model_parallel_rank(), get_model_parallel_world_size()
        )
        self.num_embeddings_per_partition = self.vocab_end_index - self.vocab_start_index

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        """``input_ [...]`` -> ``[..., h]``. An id outside this rank's range, at every
        model-parallel size, gets a zero row here (another rank supplies it), so an id outside
        the vocabulary, such as the ``-1`` that GLM's finetunes pad with, embeds to zeros, as
        in the original."""
        outside = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
        local_ids = (input_ - self.vocab_start_index).masked_fill(outside, 0)
        output = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)  # [..., h]
        return reduce_from_model_parallel_region(output)

    def partition(self, new_model_parallel_size: int | None = None, full_weight: torch.Tensor | None = None):
        """Split the full vocabulary (or ``full_weight``) into shards."""
        size = new_model_parallel_size or get_model_parallel_world_size()
        if full_weight is not None:
            return split_strided(full_weight, size, 1, dim=0)
        return split_strided(self.weight.detach(), size, 1, dim=0), []

    @torch.no_grad()
    def merge(self, new_weights: list[torch.Tensor], new_biases: list[torch.Tensor]) -> None:
        """Fill this full-size embedding from every rank's shard (``new_biases`` is unused: an
        embedding has none; the parameter keeps the signature of the linear layers' ``merge``)."""
        self.weight.copy_(torch.cat(new_weights, dim=0))

    def repartition(self) -> None:
        """Turn this full-size embedding into the current rank's shard."""
        weights, _ = self.partition()
        self._set_vocab_range()
        self.weight = mark_partitioned(Parameter(weights[get_model_parallel_rank()]), 0)
