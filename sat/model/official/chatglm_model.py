"""ChatGLM-6B (v1): GLM's 2-D positions as rotary embeddings, post-LN with each residual scaled
by ``alpha = sqrt(2 num_layers)``, tanh-GELU, an untied output head, and its own ``forward``
that builds GLM's mask and positions from the ``[gMASK]``/``[MASK]`` and start (bos) tokens.

Inputs are ``prompt... [gMASK] <bos> generated...``: the prompt (everything before bos) attends
both ways, the rest causally; prompt tokens have positions ``0, 1, ...``, every later token the
position of the mask token, and block positions count ``1, 2, ...`` from bos. Batches are left
padded with ``pad_token_id``.
"""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.official.chatglm_final import ChatGLMFinalMixin
from sat.model.position_embedding.rotary_2d import rotate_2d
from sat.model.position_embedding.rotary_embeddings import RotaryEmbedding
from sat.mpu.utils import gelu

__all__ = ["ChatGLMAttnMixin", "ChatGLMFinalMixin", "ChatGLMLayerMixin", "ChatGLMModel"]


def _index(seq: list[int], token: int, name: str) -> int:
    """Where ``token`` first occurs in ``seq``; a clear error if it does not."""
    if token not in seq:
        raise ValueError(f"ChatGLM: every sequence needs its {name} token ({token}), got {seq}")
    return seq.index(token)


class ChatGLMAttnMixin(BaseMixin):
    """``attention_forward`` with the 2-D rotary on ``position_ids [b, 2, s]`` and ChatGLM's own
    cache: ``past_key_values[layer_id]`` is ``(key, value)``, each ``[s_past, b, np, hn]``
    (sequence first, as the original and transformers' ChatGLM), prepended to this step's;
    each layer returns its whole ``(key, value)`` as ``output_this_layer['past_key_values']``."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.rotary_emb = RotaryEmbedding(hidden_size // (num_heads * 2), base=10000, learnable=False)

    def attention_forward(self, hidden_states, mask, **kw_args):
        attention = self.transformer.layers[kw_args["layer_id"]].attention
        query, key, value = attention.heads(hidden_states, **kw_args)  # [b, np, s, hn]
        query, key = rotate_2d(self.rotary_emb, query, key, kw_args["position_ids"])
        past = kw_args.get("past_key_values")
        if past is not None and past[kw_args["layer_id"]] is not None:
            past_key, past_value = (x.permute(1, 2, 0, 3) for x in past[kw_args["layer_id"]])  # [b, np, sp, hn]
            key, value = torch.cat((past_key, key), dim=2), torch.cat((past_value, value), dim=2)
        kw_args["output_this_layer"]["past_key_values"] = (key.permute(2, 0, 1, 3), value.permute(2, 0, 1, 3))
        return attention.attend(query, key, value, mask, **kw_args)  # [b, s, h]


class ChatGLMLayerMixin(BaseMixin):
    """The layers' residual scale ``alpha = sqrt(2 num_layers)`` (post order only). The scaling
    itself is the backbone's ``residual_scale``, which ``ChatGLMModel`` sets to ``alpha``."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.alpha = (2 * num_layers) ** 0.5


class ChatGLMModel(BaseModel):
    """ChatGLM-6B: tanh-GELU layers with the residual scale ``sqrt(2 num_layers)`` (post order),
    no position embeddings, mixins ``chatglm-final``, ``chatglm-attn`` and ``chatglm-layer``;
    ``args`` carry the bos, mask, gMASK and pad token ids."""

    def __init__(self, args, transformer=None, **kwargs):
        kwargs = {"activation_func": gelu, "residual_scale": (2 * args.num_layers) ** 0.5, **kwargs}
        super().__init__(args, transformer=transformer, **kwargs)
        if hasattr(self.transformer, "position_embeddings"):
            del self.transformer.position_embeddings  # positions enter through the rotary only
        skip_init = getattr(args, "skip_init", False)
        self.add_mixin("chatglm-final", ChatGLMFinalMixin(args.vocab_size, args.hidden_size, skip_init=skip_init))
        self.add_mixin("chatglm-attn", ChatGLMAttnMixin(args.hidden_size, args.num_attention_heads))
        self.add_mixin("chatglm-layer", ChatGLMLayerMixin(args.num_layers))
        self.bos_token_id = args.bos_token_id
        self.mask_token_id = args.mask_token_id
        self.gmask_token_id = args.gmask_token_id
        self.pad_token_id = args.pad_token_id

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None

    def forward(self, input_ids, position_ids=None, attention_mask=None, past_key_values=None, **kwargs):
        """``input_ids [b, s]``, the whole sequence so far even with ``past_key_values`` (then
        only its last token is run). Without ``attention_mask`` and ``position_ids`` both are
        built (``get_inputs``); a bool mask is transformers' (True = masked out)."""
        if attention_mask is None and position_ids is None:
            attention_mask, position_ids = self.get_inputs(input_ids, past_key_values=past_key_values, **kwargs)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dtype is torch.bool:
            attention_mask = (~attention_mask).long()
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
            position_ids = position_ids[..., -1:]
            if input_ids.size(0) != 1:
                attention_mask = attention_mask[:, :, -1:]
        return super().forward(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )

    def get_inputs(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        """``(attention_mask, position_ids)`` for ``input_ids``: ``get_masks`` (or, for one
        sequence continuing ``past_key_values``, ``[[1]]``: the new token sees everything) and
        ``get_position_ids`` around the ``[gMASK]`` token if present, else ``[MASK]``."""
        if attention_mask is None:
            if past_key_values is not None and input_ids.size(0) == 1:
                attention_mask = torch.tensor([[1]], dtype=torch.long, device=input_ids.device)
            else:
                attention_mask = self.get_masks(input_ids, device=input_ids.device)
        if position_ids is None:
            use_gmask = bool((input_ids == self.gmask_token_id).any())
            mask_token = self.gmask_token_id if use_gmask else self.mask_token_id
            mask_positions = [_index(seq, mask_token, "mask") for seq in input_ids.tolist()]
            position_ids = self.get_position_ids(
                input_ids, mask_positions=mask_positions, device=input_ids.device, gmask=use_gmask
            )
        return attention_mask, position_ids

    def get_pad_length(self, seq: list[int]) -> int:
        """How many ``pad_token_id`` tokens ``seq`` starts with (left padding)."""
        length = 0
        while length < len(seq) and seq[length] == self.pad_token_id:
            length += 1
        return length

    def get_masks(self, input_ids, device, **kwargs):
        """``[b, 1, s, s]`` in the model's dtype, 1 = attend: causal, but every token sees the whole
        prompt (before bos); padding neither sees nor is seen."""
        batch_size, seq_length = input_ids.shape
        dtype = next(self.parameters()).dtype
        attention_mask = torch.ones(batch_size, seq_length, seq_length, dtype=dtype, device=device).tril_()
        for i, seq in enumerate(input_ids.tolist()):
            attention_mask[i, :, : _index(seq, self.bos_token_id, "bos")] = 1
            pad_length = self.get_pad_length(seq)
            attention_mask[i, :, :pad_length] = 0
            attention_mask[i, :pad_length, :] = 0
        return attention_mask.unsqueeze(1)

    def get_position_ids(self, input_ids, mask_positions, device, gmask=False, **kwargs):
        """``[b, 2, s]``: positions counted from the first real token, all tokens from bos on at the
        mask token's position; block positions 0 before bos, then 1, 2, ... Padding is at 0."""
        batch_size, seq_length = input_ids.shape
        position_ids = torch.zeros(batch_size, 2, seq_length, dtype=torch.long, device=device)
        for i, seq in enumerate(input_ids.tolist()):
            pad_length, context_length = self.get_pad_length(seq), _index(seq, self.bos_token_id, "bos")
            positions = torch.arange(seq_length - pad_length, device=device)
            positions[context_length - pad_length :] = mask_positions[i] - pad_length
            position_ids[i, 0, pad_length:] = positions
            position_ids[i, 1, context_length:] = torch.arange(1, seq_length - context_length + 1, device=device)
        return position_ids

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("ChatGLM", "ChatGLM Configurations")
        group.add_argument("--bos-token-id", type=int)
        group.add_argument("--mask-token-id", type=int)
        group.add_argument("--gmask-token-id", type=int)
        group.add_argument("--pad-token-id", type=int)
        return super().add_model_specific_args(parser)
