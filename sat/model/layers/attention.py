"""Self- and cross-attention, and ``attention_fn``: the attention proper.

Both modules split their projections into heads the same way (``_AttentionHeads``); they differ
in where keys and values come from. Each module's ``default_forward`` is the default of its hook
(``attention_forward``, ``cross_attention_forward``); ``forward`` runs the installed hook instead
when a model or mixin set one.
"""

from __future__ import annotations

import torch

from sat.config import TransformerConfig
from sat.model.input_checks import check_attention_mask
from sat.model.layers.base import HookedModule, LayerBuild, owned_init
from sat.mpu import ColumnParallelLinear, RowParallelLinear, get_model_parallel_world_size
from sat.mpu.random import model_parallel_dropout_context
from sat.mpu.utils import divide, split_tensor_along_last_dim
from sat.ops import attention as kernels
from sat.ops.attention import full_attention_mask


def standard_attention(query_layer, key_layer, value_layer, attention_mask, attention_dropout=None, **kwargs):
    """The original's eager attention (``sat.ops.attention.standard_attention``: q, k, v
    ``[b, np, s, hn]``, mask with 1 = attend), its dropout drawn from the model-parallel random
    stream, since each model-parallel rank holds different heads."""
    return kernels.standard_attention(
        query_layer,
        key_layer,
        value_layer,
        attention_mask,
        attention_dropout,
        dropout_context=model_parallel_dropout_context,
        **kwargs,
    )


def attention_fn_default(
    query_layer: torch.Tensor,
    key_layer: torch.Tensor,
    value_layer: torch.Tensor,
    attention_mask: torch.Tensor | None,
    attention_dropout=None,
    log_attention_weights: torch.Tensor | None = None,
    scaling_attention_score: bool = True,
    sliding_window: int = 0,
    **kwargs,
) -> torch.Tensor:
    """Attention proper: q ``[b, np, sq, hn]``, k/v ``[b, nkv, sk, hn]`` (``nkv`` divides ``np``:
    MQA/GQA), mask broadcastable to ``[b, np, sq, sk]`` (1 = attend) -> ``[b, np, sq, hn]``.

    Runs SDPA when the mask is one the backbone built (full or causal) or the caller passed
    (unchanged, carrying its SDPA form; not with a sliding window) and no additive
    ``log_attention_weights`` or custom dropout is involved; the eager ``standard_attention``
    otherwise, with the same outputs. ``sliding_window > 0`` (the layer's ``sliding_window``)
    limits each query, aligned to the last key, to the keys less than that many positions back:
    keys out of every query's window (older cached ones) are dropped first, so decoding attends
    to the window only.
    """
    kind = kernels.attention_mask_kind(attention_mask)
    if kind is None and isinstance(attention_mask, torch.Tensor):  # a caller's mask, here in its real shape
        check_attention_mask(attention_mask, query_layer, key_layer)
    mask_form = None if kind is not None or sliding_window else kernels.sdpa_mask_form(attention_mask)
    if sliding_window:
        key_layer, value_layer, attention_mask, log_attention_weights = _drop_keys_before_window(
            query_layer.shape[2], key_layer, value_layer, attention_mask, log_attention_weights, sliding_window
        )
    plain_dropout = attention_dropout is None or isinstance(attention_dropout, torch.nn.Dropout)
    if (kind is not None or mask_form is not None) and log_attention_weights is None and plain_dropout:
        dropout_p = attention_dropout.p if attention_dropout is not None and attention_dropout.training else 0.0
        return kernels.sdpa_attention(
            query_layer,
            key_layer,
            value_layer,
            kind,
            dropout_p=dropout_p,
            scale=None if scaling_attention_score else 1.0,
            dropout_context=model_parallel_dropout_context,
            sliding_window=sliding_window,
            mask_form=mask_form,
        )
    if sliding_window and key_layer.shape[2] > sliding_window:
        sq, sk = query_layer.shape[2], key_layer.shape[2]
        window = kernels.sliding_window_mask(sq, sk, sliding_window, query_layer.device).to(query_layer.dtype)
        attention_mask = window if attention_mask is None else attention_mask * window  # [..., sq, sk]
    num_query_heads = query_layer.shape[1]
    return standard_attention(
        query_layer,
        kernels.expand_kv_heads(key_layer, num_query_heads),
        kernels.expand_kv_heads(value_layer, num_query_heads),
        attention_mask,
        attention_dropout,
        log_attention_weights=log_attention_weights,
        scaling_attention_score=scaling_attention_score,
        **kwargs,
    )


def _drop_keys_before_window(query_length, key, value, mask, log_attention_weights, window):
    """Keys ``[b, nkv, sk, hn]``, values, and the key columns of the mask and of the additive
    weights, without the keys no query of a sliding ``window`` sees."""
    start = kernels.first_key_in_window(query_length, key.shape[2], window)
    if start == 0:
        return key, value, mask, log_attention_weights
    if mask is not None and mask.shape[-1] > 1:  # not broadcast over the keys
        mask = mask[..., start:]
    if log_attention_weights is not None and log_attention_weights.shape[-1] > 1:
        log_attention_weights = log_attention_weights[..., start:]
    return key[:, :, start:], value[:, :, start:], mask, log_attention_weights


class _AttentionHeads(HookedModule):
    """Head arithmetic and the output projection shared by self- and cross-attention.

    Sizes: ``hn`` per head, ``np`` query heads per model-parallel rank, ``nkv`` key/value heads.
    """

    def _init_heads(self, config: TransformerConfig, layer_id: int, head_size: int | None) -> None:
        self.layer_id = layer_id
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.hidden_size_per_attention_head = head_size or divide(config.hidden_size, config.num_attention_heads)
        self.inner_hidden_size = config.num_attention_heads * self.hidden_size_per_attention_head
        self.sliding_window = 0  # self-attention sets its layer's window
        self.repartition()

    def _init_output(self, config: TransformerConfig, build: LayerBuild) -> None:
        self.attention_dropout = torch.nn.Dropout(config.attention_dropout_prob)
        self.dense = RowParallelLinear(
            self.inner_hidden_size,
            config.hidden_size,
            input_is_parallel=True,
            init_method=owned_init(build.output_layer_init_method, self, "dense"),
            bias=config.use_bias,
            final_bias=config.row_parallel_linear_final_bias,
            **build.linear_kwargs,
        )
        self.output_dropout = torch.nn.Dropout(config.output_dropout_prob)

    def repartition(self) -> None:
        """Update the per-partition sizes after the model-parallel size changed."""
        world_size = get_model_parallel_world_size()
        self.num_attention_heads_per_partition = divide(self.num_attention_heads, world_size)
        self.hidden_size_per_partition = self.hidden_size_per_attention_head * self.num_attention_heads_per_partition

    def _transpose_for_scores(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[b, s, n * hn]`` -> ``[b, n, s, hn]`` (``n`` inferred, so K/V may have fewer heads)."""
        return tensor.view(*tensor.shape[:-1], -1, self.hidden_size_per_attention_head).permute(0, 2, 1, 3)

    def attend(self, query, key, value, mask, **kw_args) -> torch.Tensor:
        """The ``attention_fn`` hook on heads: ``[b, np, sq, hn]`` -> ``[b, s, np hn]``, then the
        output projection and dropout -> ``[b, s, h]``."""
        attention_fn = self.hook("attention_fn", attention_fn_default)
        dropout_fn = self.attention_dropout if self.training else None
        if self.sliding_window:  # passed on through every attention_fn wrapper (KV cache, prefix)
            kw_args = {**kw_args, "sliding_window": self.sliding_window}
        context = attention_fn(query, key, value, mask, dropout_fn, **kw_args)  # [b, np, sq, hn]
        return self.project(context.transpose(1, 2))

    def project(self, context: torch.Tensor) -> torch.Tensor:
        """The output projection and dropout: ``[b, s, np, hn]`` -> ``[b, s, h]``."""
        output = self.dense(context.reshape(*context.shape[:2], -1))  # [b, s, h]
        if self.training:
            output = self.output_dropout(output)
        return output


class SelfAttention(_AttentionHeads):
    """Multi-head self-attention with a fused ``query_key_value`` projection.

    With ``num_multi_query_heads = g > 0`` keys and values have ``g`` heads (``g = 1`` is MQA,
    ``1 < g < heads`` GQA) and the fused weight is laid out ``[Q (heads); K (g); V (g)]``.
    """

    def __init__(self, config: TransformerConfig, layer_id: int, build: LayerBuild):
        super().__init__()
        self._attach(build.hooks, build.transformer)
        self.num_multi_query_heads = config.num_multi_query_heads
        self._init_heads(config, layer_id, config.hidden_size_per_attention_head)
        self.sliding_window = config.sliding_window_of_layer(layer_id)
        kv_size = 2 * self.hidden_size_per_attention_head * (self.num_multi_query_heads or self.num_attention_heads)
        self.query_key_value = ColumnParallelLinear(
            config.hidden_size,
            self.inner_hidden_size + kv_size,
            stride=self.stride,
            gather_output=False,
            init_method=owned_init(build.init_method, self, "query_key_value"),
            bias=config.use_bias or config.use_qkv_bias,
            **build.linear_kwargs,
        )
        self._init_output(config, build)

    def repartition(self) -> None:
        super().repartition()
        self.num_multi_query_heads_per_partition = divide(self.num_multi_query_heads, get_model_parallel_world_size())
        # How the fused projection splits into Q, K, V (per rank): equal thirds, or by head counts.
        self.stride: int | list[int] = (
            3
            if self.num_multi_query_heads == 0
            else [
                self.num_attention_heads_per_partition,
                self.num_multi_query_heads_per_partition,
                self.num_multi_query_heads_per_partition,
            ]
        )

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
        return self.hook("attention_forward", self.default_forward)(hidden_states, mask, **kw_args)

    def default_forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, **kw_args) -> torch.Tensor:
        """The default ``attention_forward``: ``[b, s, h]`` -> ``[b, s, h]``. Fused QKV
        projection, the backbone's rotary embedding if configured, ``attention_fn``, output
        projection."""
        query, key, value = self.heads(hidden_states, **kw_args)
        return self.attend(query, key, value, mask, **kw_args)

    def heads(self, hidden_states: torch.Tensor, **kw_args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[b, s, h]`` -> query ``[b, np, s, hn]``, key and value ``[b, nkv, s, hn]``: the fused
        projection split into heads, rotated by the backbone's rotary embedding if configured."""
        mixed = self.query_key_value(hidden_states)  # [b, s, (np + 2 nkv) hn]
        query, key, value = split_tensor_along_last_dim(mixed, self.stride)
        query = self._transpose_for_scores(query)  # [b, np, s, hn]
        key = self._transpose_for_scores(key)  # [b, nkv, s, hn]
        value = self._transpose_for_scores(value)  # [b, nkv, s, hn]
        if self.transformer.is_rotary_emb:
            query, key = self.transformer.position_embeddings(
                query, key, kw_args["position_ids"], layer_id=kw_args["layer_id"]
            )
        return query, key, value


class CrossAttention(_AttentionHeads):
    """Attention from decoder states (``query``) to encoder outputs (``key_value``)."""

    def __init__(self, config: TransformerConfig, layer_id: int, build: LayerBuild):
        super().__init__()
        self._attach(build.hooks, build.transformer)
        self._init_heads(config, layer_id, config.cross_hidden_size_per_attention_head)
        self.cross_num_multi_query_heads = config.cross_num_multi_query_heads
        self.cross_attn_hidden_size = config.cross_attn_hidden_size or config.hidden_size
        kv_heads = self.cross_num_multi_query_heads or self.num_attention_heads
        self.query = ColumnParallelLinear(
            config.hidden_size,
            self.inner_hidden_size,
            gather_output=False,
            init_method=owned_init(build.init_method, self, "query"),
            bias=config.use_bias,
            **build.linear_kwargs,
        )
        self.key_value = ColumnParallelLinear(
            self.cross_attn_hidden_size,
            2 * kv_heads * self.hidden_size_per_attention_head,
            stride=2,
            gather_output=False,
            init_method=owned_init(build.init_method, self, "key_value"),
            bias=config.use_bias,
            **build.linear_kwargs,
        )
        self._init_output(config, build)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cross_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        **kw_args,
    ) -> torch.Tensor:
        if cross_attention_mask is None:  # attend to every encoder position
            cross_attention_mask = full_attention_mask(hidden_states.dtype, hidden_states.device)
        cross_attention_forward = self.hook("cross_attention_forward", self.default_forward)
        return cross_attention_forward(hidden_states, cross_attention_mask, encoder_outputs, **kw_args)

    def default_forward(
        self, hidden_states: torch.Tensor, cross_attention_mask: torch.Tensor, encoder_outputs, **kw_args
    ) -> torch.Tensor:
        """The default ``cross_attention_forward``: queries from ``hidden_states [b, s, h]``,
        keys/values from ``encoder_outputs [b, se, h_enc]`` or, when it is a per-layer list of
        cached ``(k, v)`` pairs, from ``encoder_outputs[layer_id]``. Returns ``[b, s, h]``.
        Calls ``attention_fn`` with ``cross_attention=True`` and ``mem_cross=(k, v)``."""
        query = self._transpose_for_scores(self.query(hidden_states))  # [b, np, s, hn]
        if isinstance(encoder_outputs, torch.Tensor):
            key, value = split_tensor_along_last_dim(self.key_value(encoder_outputs), 2)
            key = self._transpose_for_scores(key)  # [b, nkv, se, hn]
            value = self._transpose_for_scores(value)
        else:
            key, value = encoder_outputs[kw_args["layer_id"]]
        return self.attend(
            query, key, value, cross_attention_mask, cross_attention=True, mem_cross=(key, value), **kw_args
        )
