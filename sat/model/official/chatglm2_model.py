"""ChatGLM2: RMSNorm, SiLU, multi-query attention (``num_multi_query_heads``), rotary embeddings
on the first half of each head's channels (pair layout) and an untied head.

Its ``forward`` takes the HF-style ``past_key_values`` (one ``(key, value)`` pair per layer,
``[b, nkv, past, hn]``, keys rotated) and returns each layer's as
``outputs[1 + layer]['past_key_values']``; ``ChatGLM3Model`` and ``ChatGLM4Model`` share it.
Without ``is_gated_mlp`` the gate projection is the ``mlp`` mixin's ``w2`` (the original's
checkpoint layout); with it, the backbone's ``dense_h_to_4h_gate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.build import building_on_meta
from sat.model.official.chatglm_final import ChatGLMFinalMixin
from sat.model.official.gated_mlp import gated_output, layer_projections
from sat.model.position_embedding.triton_rotary_embeddings import FastRotaryEmbedding
from sat.ops.attention import CAUSAL_MASK, AttentionMask
from sat.ops.layernorm import RMSNorm

__all__ = ["ChatGLM2AttnMixin", "ChatGLM2Model", "ChatGLMFinalMixin", "SwiGLUMixin"]

PastKeyValues = list[tuple[torch.Tensor, torch.Tensor] | None] | tuple | None


class ChatGLM2AttnMixin(BaseMixin):
    """``attention_forward``: the backbone's fused QKV heads, rotated on their first
    ``head_size / 2`` channels (``interleaved``: channel pairs ``(2i, 2i + 1)``), with the
    layer's ``past_key_values`` entry prepended to keys and values; the full keys and values
    are returned as ``output_this_layer['past_key_values']``."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        max_seq_len: int,
        head_size: int | None = None,
        base: float = 10000.0,
        interleaved: bool = True,
    ):
        super().__init__()
        head_size = head_size or hidden_size // num_heads
        # inv_freq is computed, and sat.hf translations do not carry it: real even in a meta build.
        device = torch.device("cpu") if building_on_meta() else None
        self.rotary_pos_emb = FastRotaryEmbedding(head_size // 2, base=base, interleaved=interleaved, device=device)
        self.max_seq_len = max_seq_len

    def attention_forward(self, hidden_states, mask, **kw_args):
        layer_id = kw_args["layer_id"]
        attention = self.transformer.layers[layer_id].attention
        query, key, value = attention.heads(hidden_states, **kw_args)  # [b, np, s, hn], [b, nkv, s, hn] x2
        query, key = self.rotary_pos_emb(query, key, kw_args["position_ids"])
        past = kw_args.get("past_key_values")
        if past is not None and past[layer_id] is not None:
            past_key, past_value = past[layer_id]  # [b, nkv, p, hn] x2
            key = torch.cat((past_key, key), dim=2)  # [b, nkv, p + s, hn]
            value = torch.cat((past_value, value), dim=2)
        kw_args["output_this_layer"]["past_key_values"] = (key, value)
        return attention.attend(query, key, value, mask, **kw_args)  # [b, s, h]


class SwiGLUMixin(BaseMixin):
    """ChatGLM2's MLP on a backbone without ``is_gated_mlp``:
    ``dense_4h_to_h(act(dense_h_to_4h(x)) * w2[layer](x))``, ``w2`` sharded as ``dense_h_to_4h``."""

    gate_is_w2 = False  # ChatGLM3's variant activates w2's output instead

    def __init__(self, num_layers: int, in_features: int, hidden_features: int | None, bias: bool = False):
        super().__init__()
        self.w2 = layer_projections(num_layers, in_features, hidden_features or 4 * in_features, bias)

    def mlp_forward(self, hidden_states, **kw_args):
        mlp = self.transformer.layers[kw_args["layer_id"]].mlp
        first = mlp.dense_h_to_4h(hidden_states)  # [..., 4h / mp]
        second = self.w2[kw_args["layer_id"]](hidden_states)  # [..., 4h / mp]
        activated, linear = (second, first) if self.gate_is_w2 else (first, second)
        return gated_output(mlp, mlp.activation_func, activated, linear)  # [..., h]


class ChatGLM2Model(BaseModel):
    """ChatGLM2-6B's architecture. ``forward(input_ids, position_ids=None, attention_mask=None,
    past_key_values=None, **kw)`` builds what is not given: positions ``0..s-1``, and a causal
    mask, with padding hidden when ``attention_mask`` is a ``[b, s]`` padding mask (1 = token).
    A ``[b, 1, sq, sk]`` mask is used as given (boolean: True = masked, as the original's)."""

    def __init__(self, args, transformer=None, **kwargs):
        kwargs = {"activation_func": F.silu, "layernorm": RMSNorm, **kwargs}
        super().__init__(args, transformer=transformer, **kwargs)
        if hasattr(self.transformer, "position_embeddings"):
            del self.transformer.position_embeddings  # positions enter as rotary in the attn mixin
        skip_init = getattr(args, "skip_init", False)
        self.add_mixin("chatglm-final", ChatGLMFinalMixin(args.vocab_size, args.hidden_size, skip_init=skip_init))
        self.add_mixin("attn", self._attention_mixin(args))
        mlp = self._mlp_mixin(args)
        if mlp is not None:
            self.add_mixin("mlp", mlp)

    def _attention_mixin(self, args) -> BaseMixin:
        t = self.transformer
        return ChatGLM2AttnMixin(
            t.hidden_size, t.num_attention_heads, t.max_sequence_length, t.config.head_size, base=t.rotary_base
        )

    def _mlp_mixin(self, args) -> BaseMixin | None:
        if getattr(args, "is_gated_mlp", False):
            return None  # the backbone's gated MLP
        t = self.transformer
        return SwiGLUMixin(t.num_layers, t.hidden_size, t.inner_hidden_size, bias=t.use_bias)

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None

    def get_masks(
        self, input_ids: torch.Tensor, past_key_values: PastKeyValues, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The original's boolean mask ``[b, 1, s, p + s]``, **True = masked**: causal over the
        ``s`` new tokens, the ``p`` cached positions visible, keys where ``padding_mask
        [b, p + s]`` is 0 hidden; without a cache, padding rows see everything (no empty row)."""
        batch, seq = input_ids.shape
        dtype, device = next(self.parameters()).dtype, input_ids.device
        mask = torch.ones(batch, seq, seq, dtype=dtype, device=device).tril_()  # [b, s, s]
        past_length = past_key_values[0][0].shape[2] if past_key_values else 0
        if past_length:
            mask = torch.cat((torch.ones(batch, seq, past_length, dtype=dtype, device=device), mask), dim=-1)
        if padding_mask is not None:
            padding_mask = padding_mask.to(dtype)
            mask = mask * padding_mask.unsqueeze(1)  # [b, s, p + s]
            if not past_length:
                mask -= padding_mask.unsqueeze(-1) - 1
        return (mask < 0.5).unsqueeze(1)  # [b, 1, s, p + s]

    def get_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions ``0..s-1`` for every row: ``[b, s]``."""
        batch, seq = input_ids.shape
        return torch.arange(seq, dtype=torch.long, device=input_ids.device).unsqueeze(0).repeat(batch, 1)

    def forward(self, input_ids, position_ids=None, attention_mask=None, past_key_values=None, **kwargs):
        """With ``past_key_values`` only the last token of ``input_ids`` is fed (pass the new
        token, or for one row the whole sequence) and it sees every cached position.
        ``attention_mask`` may also be ``-1`` (causal, as for every sat model)."""
        if position_ids is None:
            position_ids = self.get_position_ids(input_ids)
        attention_mask = self._attention_mask(input_ids, attention_mask, past_key_values)
        if past_key_values is not None:
            input_ids, position_ids = input_ids[:, -1:], position_ids[..., -1:]
            if isinstance(attention_mask, torch.Tensor):
                attention_mask = attention_mask[:, :, -1:]  # [b, 1, 1, p + 1]
        return super().forward(input_ids, position_ids, attention_mask, past_key_values=past_key_values, **kwargs)

    def _attention_mask(self, input_ids, attention_mask, past_key_values: PastKeyValues) -> AttentionMask:
        """The backbone's mask (1 = attend) for the arguments of ``forward``."""
        given = isinstance(attention_mask, torch.Tensor)
        if given and attention_mask.dim() == 4:
            mask = attention_mask
        elif past_key_values is not None and (input_ids.shape[0] == 1 or not given):
            return None  # one new token sees every cached one (for one row, as the original, any padding too)
        elif not given:
            return CAUSAL_MASK if attention_mask is None else attention_mask  # the backbone's causal mask: SDPA
        else:
            mask = self.get_masks(input_ids, past_key_values, padding_mask=attention_mask)
        if mask.dtype == torch.bool:
            mask = ~mask  # boolean masks say True = masked
        return mask.to(next(self.parameters()).dtype)

    @classmethod
    def add_model_specific_args(cls, parser):
        parser.add_argument_group("ChatGLM2", "ChatGLM2 Configurations")
        return super().add_model_specific_args(parser)
