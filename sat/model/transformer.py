"""The shared backbone: attention, MLP, layer and the transformer stack.

Every model in the zoo is this stack plus hooks. Each module calls its hook from the shared
``hooks`` dict when one is set, else the default from ``sat.transformer_defaults``.
Parameter names (``transformer.layers.0.attention.query_key_value.weight``...) are the
checkpoint format and match the original library.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
import torch.utils._pytree as pytree

from sat.mpu import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    checkpoint,
    get_model_parallel_world_size,
)
from sat.mpu.utils import InitMethod, divide, gelu, scaled_init_method, unscaled_init_method
from sat.ops.attention import causal_attention_mask, full_attention_mask
from sat.ops.layernorm import LayerNorm
from sat.transformer_defaults import HOOKS_DEFAULT, standard_attention

__all__ = [
    "BaseTransformer",
    "BaseTransformerLayer",
    "CrossAttention",
    "MLP",
    "SelfAttention",
    "standard_attention",
]

Device = torch.device | str | int


def _module_device(device: Device, skip_init: bool) -> Device:
    return "meta" if skip_init else device


def _build_norm(
    layernorm: Callable[..., torch.nn.Module],
    hidden_size: int,
    eps: float,
    dtype: torch.dtype,
    device,
    skip_init,
) -> torch.nn.Module:
    # Norm classes are user-replaceable and may take only (hidden_size, eps): choose the
    # device through the default-device context instead of a keyword.
    with torch.device(_module_device(device, skip_init)):
        return layernorm(hidden_size, eps=eps).to(dtype)


def _owned_init(init_method: InitMethod, owner: torch.nn.Module, name: str) -> InitMethod:
    """``init_method`` told which module and parameter it initialises (T5-style inits use
    them). Bound here rather than passed to the layer as ``module=``: DeepSpeed ZeRO-3's
    ``zero.Init`` wraps every module constructor in a function whose first parameter is
    named ``module``, so that keyword would collide."""

    def init(tensor: torch.Tensor, **kwargs) -> torch.Tensor:
        return init_method(tensor, module=owner, name=name)

    return init


class _HookedModule(torch.nn.Module):
    """A backbone module that reads the shared hooks dict and points at its transformer."""

    def _attach(self, hooks: dict, transformer_pointer: torch.nn.Module | None) -> None:
        if transformer_pointer is None:
            raise ValueError(f"{type(self).__name__} needs transformer_pointer (the BaseTransformer it belongs to)")
        self.hooks = hooks
        # Not a submodule: the transformer owns this module, not the other way round.
        object.__setattr__(self, "transformer", transformer_pointer)

    def _transpose_for_scores(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[b, s, n * hn]`` -> ``[b, n, s, hn]`` (``n`` inferred, so K/V may have fewer heads)."""
        return tensor.view(*tensor.shape[:-1], -1, self.hidden_size_per_attention_head).permute(0, 2, 1, 3)


class SelfAttention(_HookedModule):
    """Multi-head self-attention with a fused ``query_key_value`` projection.

    With ``num_multi_query_heads = g > 0`` keys and values have ``g`` heads (``g = 1`` is MQA,
    ``1 < g < heads`` GQA) and the fused weight is laid out ``[Q (heads); K (g); V (g)]``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        init_method: InitMethod,
        layer_id: int,
        hidden_size_per_attention_head: int | None = None,
        output_layer_init_method: InitMethod | None = None,
        bias: bool = True,
        qkv_bias: bool = False,
        num_multi_query_heads: int = 0,
        row_parallel_linear_final_bias: bool = True,
        hooks: dict | None = None,
        transformer_pointer: torch.nn.Module | None = None,
        params_dtype: torch.dtype = torch.float,
        skip_init: bool = False,
        device: Device = torch.device("cpu"),
    ):
        super().__init__()
        self._attach(hooks if hooks is not None else {}, transformer_pointer)
        world_size = get_model_parallel_world_size()
        self.layer_id = layer_id
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_multi_query_heads = num_multi_query_heads
        self.hidden_size_per_attention_head = hidden_size_per_attention_head or divide(hidden_size, num_attention_heads)
        self.num_attention_heads_per_partition = divide(num_attention_heads, world_size)
        self.num_multi_query_heads_per_partition = divide(num_multi_query_heads, world_size)
        self.inner_hidden_size = num_attention_heads * self.hidden_size_per_attention_head
        self.hidden_size_per_partition = self.hidden_size_per_attention_head * self.num_attention_heads_per_partition
        if num_multi_query_heads == 0:
            qkv_size = 3 * self.inner_hidden_size
            self.stride: int | list[int] = 3
        else:
            if num_attention_heads % num_multi_query_heads:
                raise ValueError(
                    f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                    f"num_multi_query_heads ({num_multi_query_heads})"
                )
            qkv_size = self.inner_hidden_size + 2 * self.hidden_size_per_attention_head * num_multi_query_heads
            self.stride = [
                self.num_attention_heads_per_partition,
                self.num_multi_query_heads_per_partition,
                self.num_multi_query_heads_per_partition,
            ]
        self.query_key_value = ColumnParallelLinear(
            hidden_size,
            qkv_size,
            stride=self.stride,
            gather_output=False,
            init_method=_owned_init(init_method, self, "query_key_value"),
            bias=bias or qkv_bias,
            params_dtype=params_dtype,
            skip_init=skip_init,
            device=device,
        )
        self.attention_dropout = torch.nn.Dropout(attention_dropout_prob)
        self.dense = RowParallelLinear(
            self.inner_hidden_size,
            hidden_size,
            input_is_parallel=True,
            init_method=_owned_init(output_layer_init_method or init_method, self, "dense"),
            bias=bias,
            params_dtype=params_dtype,
            skip_init=skip_init,
            device=device,
            final_bias=row_parallel_linear_final_bias,
        )
        self.output_dropout = torch.nn.Dropout(output_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
        if "attention_forward" in self.hooks:
            return self.hooks["attention_forward"](hidden_states, mask, **kw_args)
        return HOOKS_DEFAULT["attention_forward"](self, hidden_states, mask, **kw_args)

    def repartition(self) -> None:
        """Update the per-partition sizes after the model-parallel size changed."""
        world_size = get_model_parallel_world_size()
        self.num_attention_heads_per_partition = divide(self.num_attention_heads, world_size)
        self.num_multi_query_heads_per_partition = divide(self.num_multi_query_heads, world_size)
        self.hidden_size_per_partition = self.hidden_size_per_attention_head * self.num_attention_heads_per_partition


class CrossAttention(_HookedModule):
    """Attention from decoder states (``query``) to encoder outputs (``key_value``)."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        init_method: InitMethod,
        layer_id: int,
        hidden_size_per_attention_head: int | None = None,
        output_layer_init_method: InitMethod | None = None,
        bias: bool = True,
        cross_num_multi_query_heads: int = 0,
        row_parallel_linear_final_bias: bool = True,
        hooks: dict | None = None,
        cross_attn_hidden_size: int | None = None,
        transformer_pointer: torch.nn.Module | None = None,
        params_dtype: torch.dtype = torch.float,
        skip_init: bool = False,
        device: Device = torch.device("cpu"),
    ):
        super().__init__()
        self._attach(hooks if hooks is not None else {}, transformer_pointer)
        world_size = get_model_parallel_world_size()
        self.layer_id = layer_id
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.hidden_size_per_attention_head = hidden_size_per_attention_head or divide(hidden_size, num_attention_heads)
        self.num_attention_heads_per_partition = divide(num_attention_heads, world_size)
        self.inner_hidden_size = num_attention_heads * self.hidden_size_per_attention_head
        self.hidden_size_per_partition = self.hidden_size_per_attention_head * self.num_attention_heads_per_partition
        self.cross_num_multi_query_heads = cross_num_multi_query_heads
        kv_heads = cross_num_multi_query_heads or num_attention_heads
        self.cross_attn_hidden_size = cross_attn_hidden_size or hidden_size
        common = dict(params_dtype=params_dtype, skip_init=skip_init, device=device)
        self.query = ColumnParallelLinear(
            hidden_size,
            self.inner_hidden_size,
            gather_output=False,
            init_method=_owned_init(init_method, self, "query"),
            bias=bias,
            **common,
        )
        self.key_value = ColumnParallelLinear(
            self.cross_attn_hidden_size,
            2 * kv_heads * self.hidden_size_per_attention_head,
            stride=2,
            gather_output=False,
            init_method=_owned_init(init_method, self, "key_value"),
            bias=bias,
            **common,
        )
        self.attention_dropout = torch.nn.Dropout(attention_dropout_prob)
        self.dense = RowParallelLinear(
            self.inner_hidden_size,
            hidden_size,
            input_is_parallel=True,
            init_method=_owned_init(output_layer_init_method or init_method, self, "dense"),
            bias=bias,
            final_bias=row_parallel_linear_final_bias,
            **common,
        )
        self.output_dropout = torch.nn.Dropout(output_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cross_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        **kw_args,
    ) -> torch.Tensor:
        if cross_attention_mask is None:  # attend to every encoder position
            cross_attention_mask = full_attention_mask(hidden_states.dtype, hidden_states.device)
        if "cross_attention_forward" in self.hooks:
            return self.hooks["cross_attention_forward"](
                hidden_states, cross_attention_mask, encoder_outputs, **kw_args
            )
        return HOOKS_DEFAULT["cross_attention_forward"](
            self, hidden_states, cross_attention_mask, encoder_outputs, **kw_args
        )

    def repartition(self) -> None:
        """Update the per-partition sizes after the model-parallel size changed."""
        world_size = get_model_parallel_world_size()
        self.num_attention_heads_per_partition = divide(self.num_attention_heads, world_size)
        self.hidden_size_per_partition = self.hidden_size_per_attention_head * self.num_attention_heads_per_partition


class MLP(_HookedModule):
    """Feed-forward block: ``dense_h_to_4h`` -> activation -> ``dense_4h_to_h``; optionally
    gated (``dense_h_to_4h_gate``) and with ``num_experts`` copies (suffixed ``_1``, ``_2``...)."""

    def __init__(
        self,
        hidden_size: int,
        output_dropout_prob: float,
        init_method: InitMethod,
        inner_hidden_size: int | None = None,
        output_layer_init_method: InitMethod | None = None,
        layer_id: int | None = None,
        row_parallel_linear_final_bias: bool = True,
        hooks: dict | None = None,
        bias: bool = True,
        activation_func: Callable[[torch.Tensor], torch.Tensor] = gelu,
        transformer_pointer: torch.nn.Module | None = None,
        is_gated_mlp: bool = False,
        num_experts: int = 1,
        params_dtype: torch.dtype = torch.float,
        skip_init: bool = False,
        device: Device = torch.device("cpu"),
    ):
        super().__init__()
        self._attach(hooks if hooks is not None else {}, transformer_pointer)
        self.layer_id = layer_id
        self.activation_func = activation_func
        self.hidden_size = hidden_size
        self.inner_hidden_size = inner_hidden_size or 4 * hidden_size
        self.is_gated_mlp = is_gated_mlp
        self.num_experts = num_experts
        common = dict(params_dtype=params_dtype, skip_init=skip_init, device=device)
        for expert in range(num_experts):
            suffix = f"_{expert}" if expert > 0 else ""
            self.add_module(
                "dense_h_to_4h" + suffix,
                ColumnParallelLinear(
                    hidden_size,
                    self.inner_hidden_size,
                    gather_output=False,
                    init_method=_owned_init(init_method, self, "dense_h_to_4h" + suffix),
                    bias=bias,
                    **common,
                ),
            )
            self.add_module(
                "dense_4h_to_h" + suffix,
                RowParallelLinear(
                    self.inner_hidden_size,
                    hidden_size,
                    input_is_parallel=True,
                    init_method=_owned_init(output_layer_init_method or init_method, self, "dense_4h_to_h" + suffix),
                    bias=bias,
                    final_bias=row_parallel_linear_final_bias,
                    **common,
                ),
            )
            if is_gated_mlp:
                self.add_module(
                    "dense_h_to_4h_gate" + suffix,
                    ColumnParallelLinear(
                        hidden_size,
                        self.inner_hidden_size,
                        gather_output=False,
                        init_method=_owned_init(init_method, self, "dense_h_to_4h_gate" + suffix),
                        bias=False,
                        **common,
                    ),
                )
        self.dropout = torch.nn.Dropout(output_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, **kw_args) -> torch.Tensor:
        if "mlp_forward" in self.hooks:
            output = self.hooks["mlp_forward"](hidden_states, **kw_args)
        else:
            output = HOOKS_DEFAULT["mlp_forward"](self, hidden_states, **kw_args)
        if self.training:
            output = self.dropout(output)
        return output


class BaseTransformerLayer(_HookedModule):
    """One layer: ``input_layernorm``, ``attention``, ``post_attention_layernorm``, ``mlp``; plus
    ``third_layernorm``/``fourth_layernorm`` for the sandwich order and ``cross_attention`` with
    ``post_cross_attention_layernorm`` in decoder layers."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        layernorm_epsilon: float,
        init_method: InitMethod,
        layer_id: int,
        inner_hidden_size: int | None = None,
        hidden_size_per_attention_head: int | None = None,
        cross_hidden_size_per_attention_head: int | None = None,
        output_layer_init_method: InitMethod | None = None,
        layernorm_order: str = "pre",
        layernorm: type[torch.nn.Module] = LayerNorm,
        is_decoder: bool | list[bool] = False,
        cross_attn_hidden_size: int | None = None,
        use_bias: bool = True,
        use_qkv_bias: bool = False,
        num_multi_query_heads: int = 0,
        cross_num_multi_query_heads: int = 0,
        row_parallel_linear_final_bias: bool = True,
        drop_path: float = 0.0,
        activation_func: Callable[[torch.Tensor], torch.Tensor] = gelu,
        is_gated_mlp: bool = False,
        num_experts: int = 1,
        hooks: dict | None = None,
        transformer_pointer: torch.nn.Module | None = None,
        params_dtype: torch.dtype = torch.float,
        skip_init: bool = False,
        device: Device = torch.device("cpu"),
    ):
        super().__init__()
        hooks = hooks if hooks is not None else {}
        self._attach(hooks, transformer_pointer)
        if layernorm_order not in ("pre", "post", "sandwich"):
            raise ValueError(f"layernorm_order must be 'pre', 'post' or 'sandwich', got {layernorm_order!r}")
        self.layer_id = layer_id
        self.is_decoder = is_decoder[layer_id] if isinstance(is_decoder, list) else is_decoder
        self.layernorm_order = layernorm_order
        self.drop_path = drop_path
        shared = dict(
            hooks=hooks,
            transformer_pointer=transformer_pointer,
            params_dtype=params_dtype,
            skip_init=skip_init,
            device=device,
        )

        def norm() -> torch.nn.Module:
            return _build_norm(layernorm, hidden_size, layernorm_epsilon, params_dtype, device, skip_init)

        self.input_layernorm = norm()
        self.attention = SelfAttention(
            hidden_size,
            num_attention_heads,
            attention_dropout_prob,
            output_dropout_prob,
            init_method,
            layer_id,
            hidden_size_per_attention_head=hidden_size_per_attention_head,
            output_layer_init_method=output_layer_init_method,
            bias=use_bias,
            qkv_bias=use_qkv_bias,
            num_multi_query_heads=num_multi_query_heads,
            row_parallel_linear_final_bias=row_parallel_linear_final_bias,
            **shared,
        )
        self.post_attention_layernorm = norm()
        if layernorm_order == "sandwich":
            self.third_layernorm = norm()
            self.fourth_layernorm = norm()
        if self.is_decoder:
            self.cross_attention = CrossAttention(
                hidden_size,
                num_attention_heads,
                attention_dropout_prob,
                output_dropout_prob,
                init_method,
                layer_id,
                hidden_size_per_attention_head=cross_hidden_size_per_attention_head,
                output_layer_init_method=output_layer_init_method,
                bias=use_bias,
                cross_num_multi_query_heads=cross_num_multi_query_heads,
                row_parallel_linear_final_bias=row_parallel_linear_final_bias,
                cross_attn_hidden_size=cross_attn_hidden_size,
                **shared,
            )
            self.post_cross_attention_layernorm = norm()
        self.mlp = MLP(
            hidden_size,
            output_dropout_prob,
            init_method,
            inner_hidden_size=inner_hidden_size,
            output_layer_init_method=output_layer_init_method,
            layer_id=layer_id,
            row_parallel_linear_final_bias=row_parallel_linear_final_bias,
            bias=use_bias,
            activation_func=activation_func,
            is_gated_mlp=is_gated_mlp,
            num_experts=num_experts,
            **shared,
        )

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
        return HOOKS_DEFAULT["layer_forward"](self, hidden_states, mask, *args, **kw_args)


class BaseTransformer(torch.nn.Module):
    """Embeddings, ``num_layers`` layers and an optional final layer norm, with hook points.

    ``forward(input_ids, position_ids, attention_mask, *, output_hidden_states=False, **kw_args)``
    returns ``[logits, *output_per_layers]``: the ``final_forward`` output and one dict per layer
    (what hooks wrote into ``output_this_layer``, plus ``'hidden_states'`` when asked).
    ``attention_mask`` is ``None`` (full attention), ``-1`` (causal) or a 1 = attend tensor of
    shape ``[sq, sk]`` or ``[b, 1, sq, sk]``.
    """

    def __init__(
        self,
        num_layers: int,
        vocab_size: int,
        hidden_size: int,
        num_attention_heads: int,
        max_sequence_length: int,
        embedding_dropout_prob: float = 0,
        attention_dropout_prob: float = 0,
        output_dropout_prob: float = 0,
        drop_path: float = 0,
        checkpoint_activations: bool = False,
        checkpoint_num_layers: int = 1,
        checkpoint_skip_layers: int = 0,
        layernorm_epsilon: float = 1.0e-5,
        init_method_std: float = 0.02,
        inner_hidden_size: int | None = None,
        hidden_size_per_attention_head: int | None = None,
        cross_hidden_size_per_attention_head: int | None = None,
        layernorm_order: str = "pre",
        parallel_output: bool = False,
        is_decoder: bool | list[bool] = False,
        cross_attn_hidden_size: int | None = None,
        use_bias: bool = True,
        use_qkv_bias: bool = False,
        num_multi_query_heads: int = 0,
        cross_num_multi_query_heads: int = 0,
        row_parallel_linear_final_bias: bool = True,
        activation_func: Callable[[torch.Tensor], torch.Tensor] = gelu,
        is_gated_mlp: bool = False,
        is_rotary_emb: bool = False,
        rotary_base: float = 10000.0,
        num_experts: int = 1,
        layernorm: type[torch.nn.Module] = LayerNorm,
        init_method: InitMethod | None = None,
        use_final_layernorm: bool = True,
        hooks: dict | None = None,
        params_dtype: torch.dtype = torch.float,
        skip_init: bool = False,
        device: Device = torch.device("cpu"),
    ):
        super().__init__()
        if checkpoint_skip_layers > num_layers - checkpoint_num_layers and checkpoint_activations:
            raise ValueError(
                f"checkpoint_skip_layers ({checkpoint_skip_layers}) leaves no layer to checkpoint with "
                f"{num_layers} layers in chunks of {checkpoint_num_layers}"
            )
        # Recorded for model_config.json and for hooks that read the configuration.
        self.num_layers = num_layers
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.max_sequence_length = max_sequence_length
        self.inner_hidden_size = inner_hidden_size
        self.hidden_size_per_attention_head = hidden_size_per_attention_head
        self.cross_hidden_size_per_attention_head = cross_hidden_size_per_attention_head
        self.is_decoder = is_decoder
        self.cross_attn_hidden_size = cross_attn_hidden_size
        self.cross_num_multi_query_heads = cross_num_multi_query_heads
        self.use_bias = use_bias
        self.use_qkv_bias = use_qkv_bias
        self.num_multi_query_heads = num_multi_query_heads
        self.is_gated_mlp = is_gated_mlp
        self.is_rotary_emb = is_rotary_emb
        self.rotary_base = rotary_base
        self.num_experts = num_experts
        self.use_final_layernorm = use_final_layernorm
        self.layernorm_epsilon = layernorm_epsilon
        self.layernorm_order = layernorm_order
        self.parallel_output = parallel_output
        self.row_parallel_linear_final_bias = row_parallel_linear_final_bias
        self.checkpoint_activations = checkpoint_activations
        self.checkpoint_num_layers = checkpoint_num_layers
        self.checkpoint_skip_layers = checkpoint_skip_layers
        # One dict shared by every module; BaseModel.forward refills it, so several models
        # (an encoder and a decoder sharing embeddings) can use one transformer.
        self.hooks = copy.copy(hooks) if hooks is not None else {}
        object.__setattr__(self, "transformer", self)  # defaults reach modules via .transformer

        param_device = _module_device(device, skip_init)
        self.embedding_dropout = torch.nn.Dropout(embedding_dropout_prob)
        self.word_embeddings = VocabParallelEmbedding(
            vocab_size,
            hidden_size,
            params_dtype=params_dtype,
            init_method=unscaled_init_method(init_method_std),
            skip_init=skip_init,
            device=device,
        )
        head_size = hidden_size_per_attention_head or divide(hidden_size, num_attention_heads)
        if is_rotary_emb:
            from sat.model.position_embedding.rotary import RotaryEmbedding

            self.position_embeddings = RotaryEmbedding(head_size, base=rotary_base, device=device)
        else:
            weight = torch.empty(max_sequence_length, hidden_size, dtype=params_dtype, device=param_device)
            # The draw nn.Embedding's own initialisation makes, kept so that a seed gives the same
            # weights as ever (and as the original library, which also drew twice).
            torch.nn.init.normal_(weight)
            if not skip_init:
                torch.nn.init.normal_(weight, mean=0.0, std=init_method_std)
            # Initialised before the module takes it: under ZeRO-3 (deepspeed.zero.Init) a module's
            # parameters are partitioned as soon as its constructor returns, and an init after
            # that would write into an empty placeholder.
            self.position_embeddings = torch.nn.Embedding(max_sequence_length, hidden_size, _weight=weight)

        if init_method is None:
            self.init_method = unscaled_init_method(init_method_std)
            self.output_layer_init_method = scaled_init_method(init_method_std, num_layers)
        else:
            self.init_method = self.output_layer_init_method = init_method
        self.layers = torch.nn.ModuleList(
            BaseTransformerLayer(
                hidden_size,
                num_attention_heads,
                attention_dropout_prob,
                output_dropout_prob,
                layernorm_epsilon,
                self.init_method,
                layer_id,
                inner_hidden_size=inner_hidden_size,
                hidden_size_per_attention_head=hidden_size_per_attention_head,
                cross_hidden_size_per_attention_head=cross_hidden_size_per_attention_head,
                output_layer_init_method=self.output_layer_init_method,
                layernorm_order=layernorm_order,
                layernorm=layernorm,
                is_decoder=is_decoder,
                cross_attn_hidden_size=cross_attn_hidden_size,
                use_bias=use_bias,
                use_qkv_bias=use_qkv_bias,
                num_multi_query_heads=num_multi_query_heads,
                cross_num_multi_query_heads=cross_num_multi_query_heads,
                row_parallel_linear_final_bias=row_parallel_linear_final_bias,
                drop_path=drop_path,
                activation_func=activation_func,
                is_gated_mlp=is_gated_mlp,
                num_experts=num_experts,
                hooks=self.hooks,
                transformer_pointer=self,
                params_dtype=params_dtype,
                skip_init=skip_init,
                device=device,
            )
            for layer_id in range(num_layers)
        )
        if use_final_layernorm:
            self.final_layernorm = _build_norm(
                layernorm, hidden_size, layernorm_epsilon, params_dtype, device, skip_init
            )

    def _hook(self, name: str) -> Callable:
        hook = self.hooks.get(name)
        return hook if hook is not None else partial(HOOKS_DEFAULT[name], self)

    def _normalize_mask(self, attention_mask, query_length: int, device: torch.device) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        if attention_mask is None:
            return full_attention_mask(dtype, device)
        if isinstance(attention_mask, int):
            if attention_mask >= 0:
                raise ValueError(f"attention_mask must be None, -1 (causal) or a tensor, got {attention_mask}")
            return causal_attention_mask(query_length, dtype, device)
        if not (attention_mask.dim() == 2 or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1)):
            raise ValueError(
                f"attention_mask must have shape [sq, sk] or [b, 1, sq, sk], got {tuple(attention_mask.shape)}"
            )
        return attention_mask.to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask,
        *,
        output_hidden_states: bool = False,
        **kw_args,
    ) -> list:
        if input_ids.dim() < 2:
            raise ValueError(f"input_ids must be at least 2-D [batch, seq], got shape {tuple(input_ids.shape)}")
        attention_mask = self._normalize_mask(attention_mask, input_ids.shape[1], input_ids.device)

        output_cross_layer: dict = {}  # the embedding hooks may seed values for layer 0
        hidden_states = self._hook("word_embedding_forward")(
            input_ids, output_cross_layer=output_cross_layer, **kw_args
        )  # [b, s, h]
        position_embeddings = self._hook("position_embedding_forward")(
            position_ids, output_cross_layer=output_cross_layer, **kw_args
        )
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        hidden_states = self.embedding_dropout(hidden_states)

        hidden_states, output_per_layers = self._run_layers(
            hidden_states, attention_mask, position_ids, kw_args, output_cross_layer, output_hidden_states
        )
        logits = self.final_layernorm(hidden_states) if self.use_final_layernorm else hidden_states
        # No copy into the model-parallel region here: heads with parallel weights enter it
        # themselves (vocab_parallel_logits, ColumnParallelLinear); a replicated head (a
        # classifier) must not, or its gradient would be summed over the ranks.
        logits = self._hook("final_forward")(logits, **kw_args, parallel_output=self.parallel_output)
        return [logits, *output_per_layers]

    def _run_layers(self, hidden_states, mask, position_ids, kw_args, cross, output_hidden_states):
        num_layers = len(self.layers)
        chunk = self.checkpoint_num_layers if self.checkpoint_activations and torch.is_grad_enabled() else num_layers
        output_per_layers: list[dict] = []
        for start in range(0, num_layers, chunk):
            end = min(start + chunk, num_layers)
            args = (start, end, hidden_states, mask, position_ids, kw_args, cross, output_hidden_states)
            use_checkpoint = chunk < num_layers and start + self.checkpoint_skip_layers < num_layers
            run = self._run_chunk_checkpointed if use_checkpoint else self._run_chunk
            hidden_states, outputs, cross = run(*args)
            output_per_layers.extend(outputs)
        return hidden_states, output_per_layers

    def _run_chunk(self, start, end, hidden_states, mask, position_ids, kw_args, cross, output_hidden_states):
        outputs = []
        for layer_id in range(start, end):
            output_this_layer, output_cross_layer = {}, {}
            layer_forward = self.hooks.get("layer_forward", self.layers[layer_id])
            hidden_states = layer_forward(
                hidden_states,
                mask,
                layer_id=layer_id,
                **kw_args,
                position_ids=position_ids,
                **cross,
                output_this_layer=output_this_layer,
                output_cross_layer=output_cross_layer,
            )
            if isinstance(hidden_states, tuple):  # legacy hooks returned (hidden_states, ...)
                hidden_states = hidden_states[0]
            if output_hidden_states:
                output_this_layer["hidden_states"] = hidden_states
            outputs.append(output_this_layer)
            cross = output_cross_layer
        return hidden_states, outputs, cross

    def _run_chunk_checkpointed(self, start, end, hidden_states, mask, position_ids, kw_args, cross, hidden_out):
        # Checkpoint functions take and return tensors only, so the nested inputs (kwargs,
        # cross-layer dicts) are flattened, their tensors passed through, and the rest kept here.
        in_leaves, in_spec = pytree.tree_flatten((mask, position_ids, kw_args, cross))
        tensor_slots = [i for i, leaf in enumerate(in_leaves) if isinstance(leaf, torch.Tensor)]
        out_structure: list = []

        def chunk_forward(hidden, *tensors):
            leaves = list(in_leaves)
            for slot, tensor in zip(tensor_slots, tensors):
                leaves[slot] = tensor
            mask_, position_ids_, kw_args_, cross_ = pytree.tree_unflatten(leaves, in_spec)
            hidden, outputs, next_cross = self._run_chunk(
                start, end, hidden, mask_, position_ids_, kw_args_, cross_, hidden_out
            )
            out_leaves, out_spec = pytree.tree_flatten((outputs, next_cross))
            out_structure[:] = [out_spec, out_leaves]
            return (hidden, *[leaf for leaf in out_leaves if isinstance(leaf, torch.Tensor)])

        hidden_states, *out_tensors = checkpoint(chunk_forward, hidden_states, *[in_leaves[i] for i in tensor_slots])
        out_spec, out_leaves = out_structure
        tensors = iter(out_tensors)
        leaves = [next(tensors) if isinstance(leaf, torch.Tensor) else leaf for leaf in out_leaves]
        outputs, next_cross = pytree.tree_unflatten(leaves, out_spec)
        return hidden_states, outputs, next_cross
