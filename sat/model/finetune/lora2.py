"""LoRA: low-rank adapters on the attention projections, foldable back into the weights.

``LoraMixin`` adds no hooks. Its ``reinit`` (``add_mixin(..., reinit=True)``) wraps each
targeted ``ColumnParallelLinear``/``RowParallelLinear`` in a ``LoraLinear``, which keeps the
layer as ``original`` and adds ``scaling * B A x``. Parameter names are the original library's:
``...query_key_value.original.weight``, ``...query_key_value.matrix_A.0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from sat.model.base_model import BaseMixin
from sat.model.finetune.lenient_linear import HackColumnParallelLinear, HackLinear, HackRowParallelLinear
from sat.model.finetune.qlora import dense_weight, quantize_linears_nf4, set_dense_weight
from sat.mpu import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    get_model_parallel_rank,
    get_model_parallel_world_size,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from sat.mpu.partition import block_sizes, mark_partitioned, mark_replicated
from sat.ops.linear import linear

__all__ = [
    "HackColumnParallelLinear",
    "HackLinear",
    "HackRowParallelLinear",
    "LoraLinear",
    "LoraMixin",
    "merge_linear_lora",
    "replace_linear_with_lora",
]


def _load_plain_layer(module, state_dict: dict, prefix: str, *args) -> None:
    # load_state_dict pre-hook: a checkpoint of the unwrapped layer loads into ``original``
    # (a base model's checkpoint into a LoRA model). Idempotent, as sat.checkpoint needs.
    for name in ("weight", "bias"):
        if prefix + name in state_dict and prefix + "original." + name not in state_dict:
            state_dict[prefix + "original." + name] = state_dict.pop(prefix + name)


class LoraLinear(torch.nn.Module):
    """``original(x) + scaling * B A x`` around a model-parallel linear layer.

    Around a ``ColumnParallelLinear`` (``query_key_value``, cross-attention ``query`` and
    ``key_value``) there is one pair per fused block of the output, following the layer's
    ``stride`` (Q, K, V; with grouped-query attention the K and V blocks are smaller): ``A_i``
    ``[r, in]`` is the same on every model-parallel rank and ``B_i`` ``[block_i / mp, r]`` holds
    this rank's rows. Around a ``RowParallelLinear`` (``dense``) there is one pair: ``A``
    ``[r, in / mp]`` holds this rank's columns and ``B`` ``[out, r]`` is replicated. So the
    adapters shard exactly like the weight they adapt, and ``merge`` is local to each rank.
    """

    def __init__(
        self,
        original: ColumnParallelLinear | RowParallelLinear,
        r: int,
        lora_alpha: float = 1.0,
        lora_dropout: float = 0.0,
        mixin_name: str = "lora",
    ):
        super().__init__()
        if not isinstance(original, ColumnParallelLinear | RowParallelLinear):
            raise TypeError(
                f"LoraLinear wraps ColumnParallelLinear or RowParallelLinear, got {type(original).__name__}"
            )
        self.original = original
        self.column = isinstance(original, ColumnParallelLinear)
        self.mixin_name = mixin_name
        self.scaling = lora_alpha / r
        self.lora_dropout = torch.nn.Dropout(lora_dropout) if lora_dropout > 0 else torch.nn.Identity()
        weight = dense_weight(original)
        out_features, in_features = weight.shape  # this rank's shard
        out_blocks = block_sizes(out_features, original.stride) if self.column else [out_features]
        factory = dict(dtype=weight.dtype, device=weight.device)
        self.matrix_A = torch.nn.ParameterList(
            torch.nn.Parameter(torch.empty(r, in_features, **factory)) for _ in out_blocks
        )
        self.matrix_B = torch.nn.ParameterList(
            torch.nn.Parameter(torch.empty(size, r, **factory)) for size in out_blocks
        )
        for a, b in zip(self.matrix_A, self.matrix_B):
            # Column: B split like the weight's rows, A replicated; row: the other way round.
            split, replicated, dim = (b, a, 0) if self.column else (a, b, 1)
            mark_partitioned(split, dim=dim)
            mark_replicated(replicated)
            a.mixin_name = b.mixin_name = mixin_name  # a checkpoint without them re-initialises this mixin
        self.reset_lora_parameters()
        self.register_load_state_dict_pre_hook(_load_plain_layer)

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """``A`` Kaiming-uniform (as ``nn.Linear``), ``B`` zero: the layer starts equal to ``original``."""
        world_size = get_model_parallel_world_size()
        for a, b in zip(self.matrix_A, self.matrix_B):
            if self.column or world_size == 1:
                torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            else:  # initialise the full A and keep this rank's columns: the same model at any mp size
                full = a.new_empty(a.shape[0], a.shape[1] * world_size)
                torch.nn.init.kaiming_uniform_(full, a=math.sqrt(5))
                a.copy_(full.chunk(world_size, dim=1)[get_model_parallel_rank()])
            b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.original(x)
        x = self.lora_dropout(x)
        if self.column:
            # A is replicated but each rank's B uses it: the backward all-reduce goes on A x (not
            # on x), so A's gradient sums every rank's part and x's gradient is the full one.
            low = copy_to_model_parallel_region(linear(x, torch.cat(tuple(self.matrix_A))))  # [..., blocks * r]
            delta = torch.cat(
                [linear(part, b) for part, b in zip(low.chunk(len(self.matrix_B), dim=-1), self.matrix_B)], dim=-1
            )  # [..., out / mp], laid out like the layer's shard
            if self.original.gather_output:
                delta = gather_from_model_parallel_region(delta)
        else:
            if not self.original.input_is_parallel:
                x = scatter_to_model_parallel_region(x)
            low = reduce_from_model_parallel_region(linear(x, self.matrix_A[0]))  # [..., r]
            delta = linear(low, self.matrix_B[0])  # [..., out]
        return output + delta * self.scaling

    @torch.no_grad()
    def merge(self) -> ColumnParallelLinear | RowParallelLinear:
        """Fold ``scaling * B A`` into the wrapped layer's weight (computed in fp32) and return
        the layer: its class, parameter names and model-parallel layout are unchanged."""
        delta = torch.cat([b.float() @ a.float() for a, b in zip(self.matrix_A, self.matrix_B)])  # [out / mp, in]
        set_dense_weight(self.original, dense_weight(self.original).float() + delta * self.scaling)
        return self.original


class LoraMixin(BaseMixin):
    """LoRA on self-attention ``query_key_value`` and ``dense`` and, in decoder layers (with
    ``cross_attention``), on cross-attention ``query``, ``key_value`` and ``dense``, for the
    layers in ``layer_range`` (default: all ``layer_num``).

    Add it with ``reinit=True``: that wraps the layers. ``scaling = lora_alpha / r``. With
    ``qlora=True`` every linear layer of the transformer layers is then stored in 4-bit NF4
    (bitsandbytes, CUDA, model-parallel size 1; see ``sat.model.finetune.qlora``).
    ``merge_lora()`` folds the adapters back: the model is then a plain model again, which
    saves, loads and converts (``sat.hf.to_hf``) like one.
    """

    def __init__(
        self,
        layer_num: int,
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        layer_range: list[int] | None = None,
        qlora: bool = False,
        cross_attention: bool = True,
    ):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoraMixin needs a rank r >= 1, got r={r}")
        self.r = r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.scaling = lora_alpha / r
        self.layer_range = list(range(layer_num)) if layer_range is None else list(layer_range)
        self.qlora = qlora
        self.cross_attention = cross_attention

    def _targets(self) -> Iterator[tuple[torch.nn.Module, str]]:
        for i in self.layer_range:
            layer = self.transformer.layers[i]
            yield layer.attention, "query_key_value"
            yield layer.attention, "dense"
            if self.cross_attention and layer.is_decoder:
                for name in ("query", "key_value", "dense"):
                    yield layer.cross_attention, name

    def reinit(self, parent_model=None) -> None:
        """Wrap the target layers (adapters start at zero), or re-initialise the adapters of
        layers already wrapped (a finetune checkpoint without them)."""
        if parent_model is None:
            raise TypeError("LoraMixin.reinit needs the model: model.add_mixin(name, LoraMixin(...), reinit=True)")
        name = next(key for key, mixin in parent_model.mixins.items() if mixin is self)
        targets = list(self._targets())
        for module, attr in targets:
            layer = getattr(module, attr)
            if isinstance(layer, LoraLinear) and layer.mixin_name != name:
                raise ValueError(
                    f"mixin {name!r} (LoraMixin) and mixin {layer.mixin_name!r} both put LoRA on "
                    f"layer {module.layer_id} {type(module).__name__}.{attr}; use one LoraMixin or disjoint layer_range"
                )
        if self.qlora:  # first: it checks everything before changing anything
            quantize_linears_nf4(self.transformer.layers)
        for module, attr in targets:
            layer = getattr(module, attr)
            if isinstance(layer, LoraLinear):
                layer.reset_lora_parameters()
            else:
                setattr(module, attr, LoraLinear(layer, self.r, self.lora_alpha, self.lora_dropout, mixin_name=name))

    def merge_lora(self) -> None:
        """Fold every adapter into its layer and unwrap it (see ``LoraLinear.merge``)."""
        for module, attr in self._targets():
            layer = getattr(module, attr)
            if isinstance(layer, LoraLinear):
                setattr(module, attr, layer.merge())


def replace_linear_with_lora(
    lin: ColumnParallelLinear | RowParallelLinear,
    partition: int | list[int],
    r: int,
    lora_alpha: float = 1.0,
    lora_dropout: float = 0.0,
    qlora: bool = False,
    in_size: int | None = None,
    out_size: int | None = None,
) -> LoraLinear:
    """The original's functional form of ``LoraLinear(lin, r, lora_alpha, lora_dropout)``.

    ``partition`` (the number of fused output blocks, or their sizes) must match the layer's own
    ``stride``, which sat reads itself; ``in_size``/``out_size`` are accepted for compatibility,
    the shapes coming from the layer. NF4 storage is ``LoraMixin(qlora=True)``'s.
    """
    if qlora:
        raise ValueError("replace_linear_with_lora: for 4-bit layers use LoraMixin(..., qlora=True)")
    new_layer = LoraLinear(lin, r, lora_alpha, lora_dropout)
    blocks = len(partition) if isinstance(partition, list | tuple) else partition
    if blocks != len(new_layer.matrix_A):
        raise ValueError(
            f"replace_linear_with_lora: partition={partition} but the {type(lin).__name__} has "
            f"{len(new_layer.matrix_A)} fused output block(s) (its stride)"
        )
    return new_layer


def merge_linear_lora(lin: LoraLinear) -> ColumnParallelLinear | RowParallelLinear:
    """Fold a ``LoraLinear``'s adapters into its layer and return the layer (``LoraLinear.merge``)."""
    return lin.merge()
