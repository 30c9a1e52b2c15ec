"""Cuda2dModel: CogView2's super-resolution transformer with 2-D local attention.

The sequence is ``layout = (text_len, s0, s)``: text and a low-resolution ``l0 x l0`` image
(tokens ``[0, s0)``, ``s0 = text_len + l0**2``) under standard attention with the backbone's
weights, then a high-resolution ``l1 x l1`` image (tokens ``[s0, s)``) with its own position
embeddings (``extra_position_embedding``) and attention weights (``attention_plus``). Each
high-resolution token attends to a causal ``(2k-1) x k`` window of its own image (``k =
--kernel-size``) and to a ``k2 x k2`` window of the low-resolution image around its position
(``k2 = --kernel-size2``), one softmax over both. The original ran this on its ``localAttention``
CUDA extension; here it is pure PyTorch (``sat.ops.local_attention``), on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.mpu import ColumnParallelLinear, RowParallelLinear
from sat.mpu.utils import InitMethod, split_tensor_along_last_dim, unscaled_init_method
from sat.ops.local_attention import local_similarity, local_weighting


class PositionEmbeddingMixin(BaseMixin):
    """Position embeddings of the ``additional_sequence_length`` tokens past the backbone's."""

    def __init__(
        self,
        additional_sequence_length: int,
        hidden_size: int,
        init_method_std: float = 0.02,
        reinit_slice: slice = slice(-1024, None),
    ):
        super().__init__()
        self.reinit_slice = reinit_slice
        self.position_embeddings = torch.nn.Embedding(additional_sequence_length, hidden_size)
        torch.nn.init.normal_(self.position_embeddings.weight, mean=0.0, std=init_method_std)

    def reinit(self, parent_model=None) -> None:
        """Tile the backbone's last ``reinit_slice`` position embeddings over the new ones."""
        old_weights = self.transformer.position_embeddings.weight.data[self.reinit_slice]  # [old_len, h]
        old_len, hidden_size = old_weights.shape
        if hidden_size != self.position_embeddings.weight.shape[-1]:
            raise ValueError(f"hidden size {hidden_size} != {self.position_embeddings.weight.shape[-1]}")
        self.position_embeddings.weight.data.view(-1, old_len, hidden_size).copy_(old_weights)


class AttentionMixin(BaseMixin):
    """Attention weights (``query_key_value``, ``dense``) of the high-resolution tokens, per layer."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        init_method: InitMethod = unscaled_init_method(0.02),
        output_layer_init_method: InitMethod = unscaled_init_method(0.02),
    ):
        super().__init__()
        self.num_layers = num_layers
        self.query_key_value = torch.nn.ModuleList(
            [
                ColumnParallelLinear(
                    hidden_size, 3 * hidden_size, stride=3, gather_output=False, init_method=init_method
                )
                for _ in range(num_layers)
            ]
        )
        self.dense = torch.nn.ModuleList(
            [
                RowParallelLinear(
                    hidden_size, hidden_size, input_is_parallel=True, init_method=output_layer_init_method
                )
                for _ in range(num_layers)
            ]
        )

    def reinit(self, parent_model=None) -> None:
        """Copy the backbone's attention weights of the last ``num_layers`` layers."""
        start_layer = len(self.transformer.layers) - self.num_layers
        if start_layer < 0:
            layers = len(self.transformer.layers)
            raise ValueError(f"{self.num_layers} attention_plus layers for a {layers}-layer model")
        for layer_id in range(self.num_layers):
            old = self.transformer.layers[start_layer + layer_id].attention
            self.query_key_value[layer_id].load_state_dict(old.query_key_value.state_dict())
            self.dense[layer_id].load_state_dict(old.dense.state_dict())


def parse_layout(layout: str | list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """``"64,1088,5184"`` (or a sequence) -> ``(text_len, s0, s)``, checked to be square images."""
    parts = tuple(int(x) for x in layout.split(",")) if isinstance(layout, str) else tuple(layout)
    if len(parts) != 3 or not parts[0] < parts[1] < parts[2]:
        raise ValueError(f"--layout must be three increasing lengths text_len,s0,s, got {layout!r}")
    for n in (parts[1] - parts[0], parts[2] - parts[1]):
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"--layout {layout!r}: image of {n} tokens is not square")
    return parts


def sparse_attention_2d_light(
    q0: torch.Tensor,
    k0: torch.Tensor,
    v0: torch.Tensor,
    q1: torch.Tensor,
    k1: torch.Tensor,
    v1: torch.Tensor,
    attention_mask: torch.Tensor,
    n_head: int,
    text_len: int,
    kernel_size: int = 9,
    kernel_size2: int = 7,
    attention_dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    log_attention_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard attention of the first ``s0`` tokens (``q0, k0, v0``: [b, s0, h]) and local 2-D
    attention of the ``l1 x l1`` image (``q1, k1, v1``: [b, l1**2, h]): contexts [b, s0, h], [b, l1**2, h]."""
    b, s0, h0 = q0.shape
    s1 = q1.shape[1]
    hn, l0, l1 = h0 // n_head, math.isqrt(s0 - text_len), math.isqrt(s1)

    q0, k0, v0 = (x.view(b, s0, n_head, hn).transpose(1, 2) for x in (q0, k0, v0))  # [b, n, s0, hn]
    scores0 = torch.matmul(q0 / math.sqrt(hn), k0.transpose(-1, -2))  # [b, n, s0, s0]
    if log_attention_weights is not None:
        scores0 = scores0 + log_attention_weights
    mask = attention_mask[..., :s0, :s0]
    probs0 = F.softmax(scores0 * mask - 10000.0 * (1.0 - mask), dim=-1)

    def grid(x: torch.Tensor, side: int) -> torch.Tensor:
        """[b, n, side**2, hn] -> [b*n, hn, side, side]."""
        return x.transpose(-1, -2).reshape(b * n_head, hn, side, side)

    def heads(x: torch.Tensor) -> torch.Tensor:
        """[b, s1, h] -> [b*n, hn, l1, l1]."""
        return grid(x.view(b, s1, n_head, hn).transpose(1, 2), l1)

    q1, k1, v1 = heads(q1) / math.sqrt(hn), heads(k1), heads(v1)
    k0_image, v0_image = grid(k0[:, :, -(l0**2) :], l0), grid(v0[:, :, -(l0**2) :], l0)  # [b*n, hn, l0, l0]
    scores_1_to_0 = local_similarity(q1, k0_image, kernel_size2, kernel_size2)  # [b*n, l1, l1, k2*k2]
    scores_1_to_1 = local_similarity(q1, k1, kernel_size * 2 - 1, kernel_size, causal=True)  # [b*n, l1, l1, p]
    probs1 = F.softmax(torch.cat((scores_1_to_0, scores_1_to_1), dim=-1), dim=-1)  # one softmax over both windows

    if attention_dropout is not None:
        probs0, probs1 = attention_dropout(probs0), attention_dropout(probs1)

    context0 = torch.matmul(probs0, v0).transpose(1, 2).reshape(b, s0, h0)  # [b, s0, h]
    split = scores_1_to_0.shape[-1]
    context1 = local_weighting(v1, probs1[..., split:], kernel_size * 2 - 1, kernel_size, causal=True)
    context1 = context1 + local_weighting(v0_image, probs1[..., :split], kernel_size2, kernel_size2)  # [b*n,hn,l1,l1]
    context1 = context1.reshape(b, n_head * hn, s1).transpose(1, 2)  # [b, s1, h]
    return context0, context1


class Cuda2dModel(BaseModel):
    """CogView2's model: the backbone on text and the low-resolution image, ``attention_plus``
    and ``extra_position_embedding`` on the high-resolution image (``--layout``)."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.layout = parse_layout(args.layout)
        if args.new_sequence_length <= args.max_sequence_length:
            raise ValueError(
                f"--new-sequence-length {args.new_sequence_length} must exceed "
                f"--max-sequence-length {args.max_sequence_length}"
            )
        additional_seqlen = args.new_sequence_length - args.max_sequence_length
        self.add_mixin("extra_position_embedding", PositionEmbeddingMixin(additional_seqlen, args.hidden_size))
        self.add_mixin("attention_plus", AttentionMixin(num_layers=args.num_layers, hidden_size=args.hidden_size))
        self.kernel_size = args.kernel_size
        self.kernel_size2 = args.kernel_size2
        self.log_attention_weights = None

    def position_embedding_forward(self, position_ids: torch.Tensor, **kw_args) -> torch.Tensor:
        """Backbone embeddings for the first ``s0`` positions, the extra ones for the rest."""
        split = self.layout[1]
        extra = self.get_mixin("extra_position_embedding").position_embeddings
        return torch.cat(
            (self.transformer.position_embeddings(position_ids[..., :split]), extra(position_ids[..., split:])),
            dim=-2,
        )  # [b, s, h]

    def attention_forward(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, layer_id=None, log_attention_weights=None, **kw_args
    ) -> torch.Tensor:
        """Backbone attention weights on ``[0, s0)``, ``attention_plus`` on ``[s0, s)``."""
        attention = self.transformer.layers[layer_id].attention
        plus = self.get_mixin("attention_plus")
        split = self.layout[1]
        q0, k0, v0 = split_tensor_along_last_dim(attention.query_key_value(hidden_states[:, :split]), 3)
        q1, k1, v1 = split_tensor_along_last_dim(plus.query_key_value[layer_id](hidden_states[:, split:]), 3)
        context0, context1 = sparse_attention_2d_light(
            q0,
            k0,
            v0,
            q1,
            k1,
            v1,
            mask,
            n_head=attention.num_attention_heads_per_partition,
            text_len=self.layout[0],
            kernel_size=self.kernel_size,
            kernel_size2=self.kernel_size2,
            attention_dropout=attention.attention_dropout if self.training else None,
            log_attention_weights=log_attention_weights,
        )
        return torch.cat((attention.dense(context0), plus.dense[layer_id](context1)), dim=1)  # [b, s, h]

    def disable_untrainable_params(self) -> None:
        """Train only the mixins: the backbone stays frozen."""
        self.transformer.requires_grad_(False)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("Cuda2dModel", "cuda2d model configurations")
        group.add_argument("--kernel-size", type=int, default=9, help="k: the causal window is (2k-1) x k")
        group.add_argument("--kernel-size2", type=int, default=7, help="window on the low-resolution image")
        group.add_argument("--layout", type=str, default="64,1088,5184", help="text_len,s0,s")
        group.add_argument("--new-sequence-length", type=int, default=5185)
        return parser
