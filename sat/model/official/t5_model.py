"""T5: an encoder-decoder with relative position buckets, RMS layer norms and no biases.

v1.0 has a ReLU MLP and ties the output head to the (scaled) word embedding; v1.1
(``--gated-gelu-mlp --no-share-embeddings``) has a gated tanh-GELU MLP and its own ``lm_head``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin
from sat.model.encoder_decoder_model import EncoderDecoderModel, decoder_args
from sat.model.layers import MLP, CrossAttention, SelfAttention, attention_fn_default
from sat.model.official.gated_mlp import T5GatedGeluMLPMixin as T5GatedGeluMLPMixin  # the original's name, here
from sat.mpu import (
    ColumnParallelLinear,
    get_model_parallel_rank,
    get_model_parallel_world_size,
    vocab_parallel_logits,
)
from sat.mpu.partition import mark_partitioned, split_strided
from sat.mpu.utils import divide, gelu
from sat.ops.layernorm import RMSNorm
from sat.quantization.layers import linear_weight

# T5's layer norm is an RMS norm: no mean subtraction, no bias.
T5LayerNorm = RMSNorm


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each ``key - query`` distance: one bucket per distance below half the
    buckets, log-spaced buckets up to ``max_distance``, the last bucket beyond. Bidirectional
    attention spends half the buckets on each side; causal attention has only the past."""
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        buckets = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # The float32 log in Mesh TensorFlow's order of operations, so distances land in its buckets.
    scaled = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = (max_exact + scaled.long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5PositionEmbeddingMixin(BaseMixin):
    """No absolute positions: T5's positions are the attention bias of ``t5-attention``."""

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None


class T5AttentionMixin(BaseMixin):
    """Unscaled attention plus a learned bias per head and relative-position bucket.

    The first layer computes the bias and hands it to the next through ``output_cross_layer``
    (``position_bias``); cross-attention gets none.
    """

    def __init__(
        self,
        relative_attention_num_buckets: int,
        num_attention_heads: int,
        is_decoder: bool = False,
        relative_attention_max_distance: int = 128,
        skip_init: bool = False,
    ):
        super().__init__()
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.is_decoder = is_decoder
        world_size = get_model_parallel_world_size()
        if skip_init:
            weight = torch.empty(relative_attention_num_buckets, divide(num_attention_heads, world_size))
        else:
            # Every head's bias drawn as one process draws it (torch.nn.Embedding's N(0, 1)), then
            # this rank's heads kept: the same model at any model-parallel size.
            full = torch.nn.init.normal_(torch.empty(relative_attention_num_buckets, num_attention_heads))
            weight = split_strided(full, world_size, dim=1)[get_model_parallel_rank()]
        self.relative_attention_bias = torch.nn.Embedding.from_pretrained(weight, freeze=False)
        mark_partitioned(self.relative_attention_bias.weight, 1)  # [buckets, heads / mp]

    def compute_bias(self, query_length: int, key_length: int) -> torch.Tensor:
        """``[1, np, sq, sk]`` bias for queries at the last ``query_length`` key positions."""
        device = self.relative_attention_bias.weight.device
        memory = torch.arange(key_length, device=device)
        context = torch.arange(key_length - query_length, key_length, device=device)
        buckets = relative_position_bucket(
            memory[None, :] - context[:, None],
            bidirectional=not self.is_decoder,
            num_buckets=self.relative_attention_num_buckets,
            max_distance=self.relative_attention_max_distance,
        )  # [sq, sk]
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, np, sq, sk]

    @BaseMixin.non_conflict
    def attention_fn(
        self,
        q,
        k,
        v,
        mask,
        dropout_fn,
        position_bias=None,
        old_impl=attention_fn_default,
        cross_attention=False,
        **kw_args,
    ):
        if cross_attention:
            return old_impl(q, k, v, mask, dropout_fn, cross_attention=True, scaling_attention_score=False, **kw_args)
        if position_bias is None:
            position_bias = self.compute_bias(q.shape[2], k.shape[2])
        kw_args["output_cross_layer"]["position_bias"] = position_bias
        extra = kw_args.pop("log_attention_weights", None)  # a caller's own additive weights
        bias = position_bias if extra is None else position_bias + extra
        return old_impl(q, k, v, mask, dropout_fn, log_attention_weights=bias, scaling_attention_score=False, **kw_args)


class T5DecoderFinalMixin(BaseMixin):
    """``final_forward``: the word embedding (tied, after scaling by ``hidden_size ** -0.5``) or
    an own ``lm_head`` projects to the vocabulary."""

    def __init__(self, vocab_size: int, hidden_size: int, tie_word_embeddings: bool = True, skip_init: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.tie_word_embeddings = tie_word_embeddings
        if not tie_word_embeddings:
            # Column-parallel, its rows the vocabulary shard: GPT2FinalMixin's convention.
            self.lm_head = ColumnParallelLinear(
                hidden_size, vocab_size, bias=False, gather_output=False, skip_init=skip_init
            )

    def final_forward(self, logits, **kw_args):
        if self.tie_word_embeddings:
            logits, weight = logits * self.hidden_size**-0.5, self.transformer.word_embeddings.weight
        else:
            weight = linear_weight(self.lm_head, logits.dtype)  # dequantized if quantized
        return vocab_parallel_logits(logits, weight, kw_args["parallel_output"])  # [b, s, vocab (/ mp)]


def t5_init_method(std: float):
    """T5's initialisation (Mesh TensorFlow's): each projection's std scales with the inverse
    square root of its fan-in; queries also divide by the head size."""

    def init(weight: torch.Tensor, module: torch.nn.Module, name: str) -> torch.Tensor:
        if isinstance(module, MLP):
            fan_in = module.inner_hidden_size if name == "dense_4h_to_h" else module.hidden_size
        elif isinstance(module, SelfAttention | CrossAttention):
            fan_in = module.inner_hidden_size if name == "dense" else module.hidden_size
        else:
            raise NotImplementedError(f"T5 has no initialisation for {type(module).__name__}.{name}")
        torch.nn.init.normal_(weight, mean=0.0, std=std * fan_in**-0.5)
        if name in ("query_key_value", "query"):
            query_std = std * (module.hidden_size * module.hidden_size_per_attention_head) ** -0.5
            torch.nn.init.normal_(weight[: module.inner_hidden_size], mean=0.0, std=query_std)
        return weight

    return init


def _load_original_gated_mlp(module, state_dict, prefix, *args) -> None:
    # The original kept v1.1's linear half in a `gated-mlp` mixin (gated_h_to_4h_list.<layer>)
    # and its GELU half in dense_h_to_4h; the backbone's gated MLP names them dense_h_to_4h and
    # dense_h_to_4h_gate. Renames only, so running twice changes nothing.
    old = f"{prefix}mixins.gated-mlp.gated_h_to_4h_list."
    for key in [key for key in state_dict if key.startswith(old)]:
        layer, _, param = key[len(old) :].partition(".")
        mlp = f"{prefix}transformer.layers.{layer}.mlp."
        state_dict[f"{mlp}dense_h_to_4h_gate.{param}"] = state_dict.pop(f"{mlp}dense_h_to_4h.{param}")
        state_dict[f"{mlp}dense_h_to_4h.{param}"] = state_dict.pop(key)


class T5Model(EncoderDecoderModel):
    """T5 (``t5-attention``, ``t5-position`` on both halves, ``t5-final`` on the decoder).

    ``hidden_size_per_attention_head`` is T5's ``d_kv`` and ``inner_hidden_size`` its ``d_ff``.
    Checkpoints of the original's v1.1 layout (a ``gated-mlp`` mixin) load as well.
    """

    def __init__(self, args, **kwargs):
        skip_init = getattr(args, "skip_init", False)
        kwargs.setdefault("use_bias", False)
        kwargs.setdefault("layernorm", T5LayerNorm)
        kwargs.setdefault("is_gated_mlp", args.gated_gelu_mlp)
        kwargs.setdefault("activation_func", gelu if args.gated_gelu_mlp else F.relu)
        kwargs.setdefault("init_method", t5_init_method(args.init_method_std))
        # Cross-attention heads are as wide as the decoder's own (d_kv) unless args say otherwise.
        cross_head_size = getattr(args, "cross_hidden_size_per_attention_head", None)
        kwargs.setdefault(
            "cross_hidden_size_per_attention_head", cross_head_size or decoder_args(args).hidden_size_per_attention_head
        )
        super().__init__(args, tie_word_embeddings=True, **kwargs)
        self.init_method_std = args.init_method_std
        for half in (self.encoder, self.decoder):
            is_decoder = half is self.decoder
            attention = T5AttentionMixin(
                args.relative_attention_num_buckets,
                half.transformer.num_attention_heads,
                is_decoder=is_decoder,
                relative_attention_max_distance=args.relative_attention_max_distance,
                skip_init=skip_init,
            )
            half.add_mixin("t5-attention", attention)
            half.add_mixin("t5-position", T5PositionEmbeddingMixin())
            del half.transformer.position_embeddings
            half.register_load_state_dict_pre_hook(_load_original_gated_mlp)
        final = T5DecoderFinalMixin(
            args.vocab_size, self.decoder.transformer.hidden_size, not args.no_share_embeddings, skip_init=skip_init
        )
        self.decoder.add_mixin("t5-final", final)

    @classmethod
    def add_model_specific_args(cls, parser):
        super().add_model_specific_args(parser)
        group = parser.add_argument_group("T5", "T5 Configurations")
        group.add_argument("--relative-attention-num-buckets", type=int, default=32)
        group.add_argument("--relative-attention-max-distance", type=int, default=128)
        group.add_argument("--init-method-std", type=float, default=0.02)
        group.add_argument("--gated-gelu-mlp", action="store_true", help="v1.1's gated tanh-GELU MLP")
        group.add_argument("--no-share-embeddings", action="store_true", help="an own lm_head (v1.1)")
        return parser

    def encode(self, input_ids, attention_mask=None, **kw_args):
        """The encoder's final hidden states ``[b, s_enc, h]`` (T5 needs no position ids)."""
        return super().encode(input_ids, None, attention_mask, **kw_args)

    def decode(self, input_ids, attention_mask=None, encoder_outputs=None, cross_attention_mask=None, **kw_args):
        """The decoder's ``[logits, *output_per_layers]``; see ``EncoderDecoderModel.decode``."""
        return super().decode(input_ids, None, attention_mask, encoder_outputs, cross_attention_mask, **kw_args)

    def forward(
        self,
        enc_input_ids,
        dec_input_ids,
        *,
        enc_attention_mask=None,
        dec_attention_mask=None,
        cross_attention_mask=None,
        enc_position_ids=None,
        dec_position_ids=None,
        **kw_args,
    ):
        """``(encoder_outputs, decoder_logits, *output_per_layers)``; see ``EncoderDecoderModel``.

        ``enc_position_ids`` and ``dec_position_ids`` are accepted, as the original's T5
        finetune passes them, and unused: T5's relative attention bias needs no positions."""
        return super().forward(
            enc_input_ids,
            None,
            dec_input_ids,
            None,
            enc_attention_mask=enc_attention_mask,
            dec_attention_mask=dec_attention_mask,
            cross_attention_mask=cross_attention_mask,
            **kw_args,
        )
