"""GLM-130B: a GEGLU MLP and DeepNorm residuals (post-LN, each residual scaled by
``alpha = sqrt(2 num_layers)``), attention with an fp32 softmax scaled per layer, rotary
positions (1-D, or GLM's 2-D with ``--position-encoding-2d``), no position embeddings and the
tied output head. Its fused ``query_key_value`` is laid out per head (``[q; k; v]`` of head 0,
then head 1...), as the original's checkpoints are.

The original ran sequence-first (``[s, b, h]`` between its hooks) and kept the key/value cache
inside ``fp32-softmax``; here the hooks are batch-first like every model's, and the cache is
``CachedAutoregressiveMixin``'s (its ``mems``/``mem_kv`` format is the original's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin
from sat.model.position_embedding.rotary import rotate_with
from sat.model.position_embedding.rotary_2d import rotate_2d
from sat.model.position_embedding.rotary_embeddings import RotaryEmbedding
from sat.mpu import ColumnParallelLinear
from sat.mpu.partition import mark_partitioned
from sat.mpu.random import model_parallel_dropout_context
from sat.mpu.utils import divide


class RotaryEmbeddingMixin(BaseMixin):
    """``attention_forward``: split the per-head fused projection, rotate queries and keys by
    ``position_ids`` (``[b, s]``; ``[b, 2, s]`` with ``position_encoding_2d``), attend."""

    def __init__(
        self,
        fp16: bool,
        hidden_size: int,
        num_attention_heads: int,
        model_parallel_size: int,
        position_encoding_2d: bool,
    ):
        super().__init__()
        self.hidden_size_per_attention_head = divide(hidden_size, num_attention_heads)
        self.num_attention_heads_per_partition = divide(num_attention_heads, model_parallel_size)
        self.position_encoding_2d = position_encoding_2d
        dim = self.hidden_size_per_attention_head // (2 if position_encoding_2d else 1)
        self.rotary_emb = RotaryEmbedding(dim, base=10000, precision=torch.half if fp16 else torch.float)

    def attention_forward(self, hidden_states, mask, **kw_args):
        attention = self.transformer.layers[kw_args["layer_id"]].attention
        mixed = attention.query_key_value(hidden_states)  # [b, s, np * 3 hn], per head q, k, v
        mixed = mixed.unflatten(-1, (-1, 3 * self.hidden_size_per_attention_head)).transpose(1, 2)  # [b, np, s, 3 hn]
        query, key, value = mixed.chunk(3, dim=-1)  # [b, np, s, hn] each
        position_ids = kw_args["position_ids"]
        if self.position_encoding_2d:
            query, key = rotate_2d(self.rotary_emb, query, key, position_ids)
        else:
            cos, sin = self.rotary_emb.cos_sin(position_ids, query.dtype)  # [b, 1, s, hn]
            query, key = rotate_with(query, cos, sin), rotate_with(key, cos, sin)
        return attention.attend(query, key, value, mask, **kw_args)  # [b, s, h]


class GEGLU(torch.nn.Module):
    """``[..., 2 n]`` -> ``[..., n]``: the first half times the (erf) GELU of the second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear, gate = x.chunk(2, dim=-1)
        return linear * F.gelu(gate)


class DeepNormWithGLUMixin(BaseMixin):
    """GLM-130B's layers: DeepNorm residuals, which are the backbone's post order with
    ``residual_scale = alpha`` (``GLM130B`` sets both), and the GEGLU MLP that ``build_glu``
    makes: each ``dense_h_to_4h`` widened to ``2 inner_hidden_size`` outputs, halved by GEGLU."""

    def __init__(self, num_layers: int, hidden_size: int, inner_hidden_size: int | None = None):
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.inner_hidden_size = inner_hidden_size or 4 * hidden_size * 2 // 3
        self.alpha = (2 * num_layers) ** 0.5

    def build_glu(self, skip_init: bool = False) -> None:
        """Replace every layer's ``dense_h_to_4h`` by a ``[2 inner, h]`` one (same dtype and
        device) and its activation by ``GEGLU``."""
        for layer in self.transformer.layers:
            old = layer.mlp.dense_h_to_4h
            del layer.mlp.dense_h_to_4h  # re-added last, so the saved keys come in the original's order
            layer.mlp.dense_h_to_4h = ColumnParallelLinear(
                self.hidden_size,
                2 * self.inner_hidden_size,
                stride=2,  # [linear; gate]: a rank's shard is its part of each half
                bias=old.bias is not None,
                gather_output=False,
                init_method=self.transformer.init_method,
                params_dtype=old.weight.dtype,
                skip_init=skip_init,
                device=old.weight.device,
            )
            layer.mlp.activation_func = GEGLU()


class SelfAttentionWithFP32SoftmaxMixin(BaseMixin):
    """``attention_fn`` as GLM-130B computes it against fp16 overflow: layer ``l`` divides the
    queries by ``sqrt(hn) (l + 1)`` and multiplies the masked scores by ``l + 1`` in fp32, takes
    the softmax in fp32 and returns the probabilities to the inputs' dtype."""

    def __init__(self, hidden_size: int, num_attention_heads: int, model_parallel_size: int):
        super().__init__()
        self.hidden_size_per_attention_head = divide(hidden_size, num_attention_heads)
        self.hidden_size_per_partition = divide(hidden_size, model_parallel_size)

    def attention_fn(
        self,
        query_layer,
        key_layer,
        value_layer,
        attention_mask,
        attention_dropout=None,
        log_attention_weights=None,
        scaling_attention_score=True,
        **kwargs,
    ):
        """q ``[b, np, sq, hn]``, k/v ``[b, np, sk, hn]``, mask 1 = attend -> ``[b, np, sq, hn]``."""
        coefficient = float(kwargs["layer_id"] + 1)
        if scaling_attention_score:
            query_layer = query_layer / (math.sqrt(self.hidden_size_per_attention_head) * coefficient)
        scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))  # [b, np, sq, sk]
        if log_attention_weights is not None:
            scores = scores + log_attention_weights
        scores = scores.masked_fill(attention_mask == 0, -10000.0)
        probs = F.softmax(scores.float() * coefficient, dim=-1).to(value_layer.dtype)
        if attention_dropout is not None:
            with model_parallel_dropout_context():
                probs = attention_dropout(probs)
        return torch.matmul(probs, value_layer)  # [b, np, sq, hn]


class FinalForwardMixin(BaseMixin):
    """The original's ``final-forward``: the tied head, which is the backbone's default here
    (the original's also turned its sequence-first output batch-first)."""


class NonePositionEmbedding(BaseMixin):
    """No position embedding is added: positions enter through the rotary."""

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None


class WordEmbedding(BaseMixin):
    """The original's ``word-embedding``, which made the embeddings sequence-first; the
    backbone's default embedding is used here."""


class GLM130B(BaseModel):
    """GLM-130B: post-LN layers with the residual scale ``sqrt(2 num_layers)`` (DeepNorm), a
    GEGLU MLP unless ``--no-glu``, rotary positions (2-D with ``--position-encoding-2d``), the
    tied head; the original's mixins ``glu-deepnorm``, ``fp32-softmax``, ``final-forward``,
    ``non-position-embedding``, ``word-embedding`` and ``rotary-embedding``."""

    def __init__(self, args, transformer=None, **kwargs):
        glu = not getattr(args, "no_glu", False)
        inner = args.inner_hidden_size or (4 * args.hidden_size * 2 // 3 if glu else None)
        defaults = {"layernorm_order": "post", "residual_scale": (2 * args.num_layers) ** 0.5}
        kwargs = {**defaults, "inner_hidden_size": inner, **kwargs}
        super().__init__(args, transformer=transformer, **kwargs)
        mp_size = getattr(args, "model_parallel_size", 1)
        self.add_mixin("glu-deepnorm", DeepNormWithGLUMixin(args.num_layers, args.hidden_size, inner))
        self.add_mixin(
            "fp32-softmax", SelfAttentionWithFP32SoftmaxMixin(args.hidden_size, args.num_attention_heads, mp_size)
        )
        self.add_mixin("final-forward", FinalForwardMixin())
        self.add_mixin("non-position-embedding", NonePositionEmbedding())
        if hasattr(self.transformer, "position_embeddings"):
            del self.transformer.position_embeddings
        self.add_mixin("word-embedding", WordEmbedding())
        rotary = RotaryEmbeddingMixin(
            getattr(args, "fp16", False),
            args.hidden_size,
            args.num_attention_heads,
            mp_size,
            getattr(args, "position_encoding_2d", False),
        )
        self.add_mixin("rotary-embedding", rotary)
        for layer in self.transformer.layers:
            # Per-head [q; k; v] rows: a rank's shard is whole heads, one contiguous block of the
            # full projection, not a third of each of Q, K and V as in the default layout.
            for param in layer.attention.query_key_value.parameters():
                mark_partitioned(param, dim=0, stride=1)
        if glu:
            self.get_mixin("glu-deepnorm").build_glu(skip_init=getattr(args, "skip_init", False))

    def forward(self, input_ids, position_ids, attention_mask, *args, mems=None, **kwargs):
        """The backbone's forward; a bool ``attention_mask`` is the original's (True = masked
        out), and ``mems`` need the KV cache mixin."""
        if mems is not None and not any(isinstance(m, CachedAutoregressiveMixin) for m in self.mixins.values()):
            raise ValueError(
                "GLM130B: mems need the key/value cache, which the original kept in fp32-softmax: "
                "model.add_mixin('auto-regressive', CachedAutoregressiveMixin())"
            )
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dtype is torch.bool:
            # The original skipped a one-query mask that masks every key (its decoding step).
            everything = attention_mask.shape[-2] == 1 and bool(attention_mask.all())
            attention_mask = None if everything else (~attention_mask).long()
        if mems is not None:
            kwargs["mems"] = mems
        return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("GLM130B", "GLM-130B Configurations")
        group.add_argument("--position-encoding-2d", action="store_true", help="Use 2D rotary embedding.")
        group.add_argument("--no-glu", action="store_true", help="Disable GLU.")
        return super().add_model_specific_args(parser)
