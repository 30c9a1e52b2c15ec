"""CaiT (Touvron et al. 2021, "Going deeper with image transformers"): a ViT encoder with
talking-heads attention and LayerScale, then a class-attention decoder in which the class token
attends to itself and the patches.

As in the original, ``CaiT`` is an ``EncoderDecoderModel``: ``CaiTEncoder`` (a ``ViTModel``
without head or final norm; mixins ``attn`` = ``AttnMixin``, ``enc_forward`` = ``EncForward``)
and ``CaiTDecoder`` (a decoder ``BaseModel`` over the class token; mixins ``cls`` and
``dec_forward`` = ``DecForward``). The class token is the decoder's word embedding, tied to the
encoder's. Unlike the original's, ``CaiT`` builds from ``model_config.json`` (``AutoModel``).

The decoder layers never run their self-attention, ``post_attention_layernorm`` or position
embeddings: those parameters exist so that checkpoints keep the original's keys, and are frozen.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.encoder_decoder_model import EncoderDecoderModel, decoder_args
from sat.model.official.vit_model import ClsMixin, ViTModel
from sat.mpu import get_model_parallel_world_size
from sat.mpu.random import model_parallel_dropout_context


def layer_scales(dim: int, num_layers: int, init_values: float) -> torch.nn.ParameterList:
    """One LayerScale vector ``[dim]`` per layer, filled with ``init_values``."""
    return torch.nn.ParameterList([torch.nn.Parameter(torch.full((dim,), init_values)) for _ in range(num_layers)])


class AttnMixin(BaseMixin):
    """``attention_fn``: talking-heads attention, a learned mix of the heads (``proj_l[i]``,
    ``[np] -> [np]``) on the scores before the softmax and another (``proj_w[i]``) after it."""

    def __init__(self, num_heads: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.proj_l = torch.nn.ModuleList([torch.nn.Linear(num_heads, num_heads) for _ in range(num_layers)])
        self.proj_w = torch.nn.ModuleList([torch.nn.Linear(num_heads, num_heads) for _ in range(num_layers)])

    def attention_fn(self, query_layer, key_layer, value_layer, attention_mask, attention_dropout=None, **kw_args):
        layer_id = kw_args["layer_id"]
        if kw_args.get("scaling_attention_score", True):
            query_layer = query_layer * query_layer.shape[-1] ** -0.5
        scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))  # [b, np, sq, sk]
        if kw_args.get("log_attention_weights") is not None:
            scores = scores + kw_args["log_attention_weights"]
        scores = self.proj_l[layer_id](scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # heads mixed
        scores = scores * attention_mask - 10000.0 * (1.0 - attention_mask)  # 1 = attend
        probs = F.softmax(scores, dim=-1)
        probs = self.proj_w[layer_id](probs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [b, np, sq, sk]
        if attention_dropout is not None:
            with model_parallel_dropout_context():
                probs = attention_dropout(probs)
        return torch.matmul(probs, value_layer)  # [b, np, sq, hn]

    def reinit(self, parent_model=None) -> None:
        """Identity head mixes: the attention of a standard ViT, whose weights can then be reused."""
        for i in range(self.num_layers):
            torch.nn.init.eye_(self.proj_l[i].weight)
            torch.nn.init.eye_(self.proj_w[i].weight)


class EncForward(BaseMixin):
    """``layer_forward`` of the encoder: pre-LN with LayerScale, ``x + gamma * branch(ln(x))``."""

    def __init__(self, dim: int, num_layers: int, init_values: float = 1e-4):
        super().__init__()
        self.gamma_1 = layer_scales(dim, num_layers, init_values)
        self.gamma_2 = layer_scales(dim, num_layers, init_values)

    def layer_forward(self, hidden_states, mask, *args, **kw_args):
        i = kw_args["layer_id"]
        layer = self.transformer.layers[i]
        attention = layer.attention(layer.input_layernorm(hidden_states), mask, **kw_args)  # [b, s, h]
        hidden_states = hidden_states + self.gamma_1[i] * attention
        return hidden_states + self.gamma_2[i] * layer.mlp(layer.post_attention_layernorm(hidden_states), **kw_args)


class DecForward(BaseMixin):
    """``layer_forward`` of the decoder, class attention: the class tokens and the encoder's
    output are normed together (``input_layernorm``); the class tokens query them all
    (``cross_attention``); then the MLP (``post_cross_attention_layernorm``), both with
    LayerScale. No position embeddings."""

    def __init__(self, dim: int, num_layers: int, init_values: float = 1e-4):
        super().__init__()
        self.gamma_1 = layer_scales(dim, num_layers, init_values)
        self.gamma_2 = layer_scales(dim, num_layers, init_values)

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return 0

    def layer_forward(self, hidden_states, mask, *args, **kw_args):
        encoder_outputs = kw_args.get("encoder_outputs")
        if encoder_outputs is None:
            raise ValueError("CaiTDecoder needs encoder_outputs: the class tokens attend to the patches")
        i = kw_args["layer_id"]
        layer = self.transformer.layers[i]
        classes = hidden_states.shape[1]
        normed = layer.input_layernorm(torch.cat([hidden_states, encoder_outputs], dim=1))  # [b, c + s_enc, h]
        cross_args = {**kw_args, "encoder_outputs": normed}  # keys and values: classes and patches
        attention = layer.cross_attention(normed[:, :classes], **cross_args)  # [b, c, h]
        hidden_states = hidden_states + self.gamma_1[i] * attention
        mlp = layer.mlp(layer.post_cross_attention_layernorm(hidden_states), **kw_args)
        return hidden_states + self.gamma_2[i] * mlp


class CaiTEncoder(ViTModel):
    """The patch encoder: a ViT without head and final layer norm, with ``attn`` and ``enc_forward``."""

    def __init__(self, args, transformer=None, layernorm_epsilon: float = 1e-6, use_final_layernorm: bool = False):
        if get_model_parallel_world_size() > 1:
            raise ValueError("CaiT does not support model parallelism (talking heads mix all the heads)")
        super().__init__(
            args, transformer=transformer, layernorm_epsilon=layernorm_epsilon, use_final_layernorm=use_final_layernorm
        )
        self.add_mixin("attn", AttnMixin(args.num_attention_heads, args.num_layers))
        self.add_mixin("enc_forward", EncForward(args.hidden_size, args.num_layers, init_values=args.init_scale))

    def add_head(self, args, hidden_size: int) -> None:
        """No head: the decoder classifies."""

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("CaiT-enc", "CaiT encoder Configurations")
        group.add_argument("--init-scale", type=float, default=1e-4, help="initial LayerScale value")
        parser = super().add_model_specific_args(parser)
        parser.set_defaults(pre_len=0, vocab_size=1)  # the class token enters in the decoder only
        return parser


class CaiTDecoder(BaseModel):
    """The class-attention decoder over the class token (``input_ids`` ``[b, 1]``), with the
    classifier ``cls`` on it."""

    def __init__(self, args, transformer=None, layernorm_epsilon: float = 1e-6):
        super().__init__(args, is_decoder=True, transformer=transformer, layernorm_epsilon=layernorm_epsilon)
        self.add_mixin("cls", ClsMixin(args.hidden_size, args.num_classes))
        self.add_mixin("dec_forward", DecForward(args.hidden_size, args.num_layers, init_values=args.init_scale))
        unused = [self.transformer.position_embeddings]
        for layer in self.transformer.layers:
            unused += [layer.attention, layer.post_attention_layernorm]
        for module in unused:
            module.requires_grad_(False)


class CaiT(EncoderDecoderModel):
    """``CaiTEncoder`` + ``CaiTDecoder``; ``--dec-num-layers`` sets the class-attention layers.

    ``forward(input_ids, enc_position_ids, dec_position_ids, image=...)`` returns
    ``(encoder_outputs, logits, *decoder_output_per_layers)`` as the original did; ``input_ids``
    is ``[b, 1]`` zeros, the class token (and the encoder's ``pre_len`` special tokens).
    """

    def __init__(self, args, transformer=None, layernorm_epsilon: float = 1e-6):
        encoder = CaiTEncoder(args, transformer=transformer, layernorm_epsilon=layernorm_epsilon)
        decoder = CaiTDecoder(decoder_args(args), transformer=transformer, layernorm_epsilon=layernorm_epsilon)
        super().__init__(args, encoder=encoder, decoder=decoder)

    def forward(self, input_ids, enc_position_ids=None, dec_position_ids=None, *, enc_attention_mask=None, **kw_args):
        if enc_attention_mask is None:  # the original's default: attend everywhere, eagerly
            dtype = self.encoder.transformer.word_embeddings.weight.dtype
            enc_attention_mask = torch.ones(1, 1, dtype=dtype, device=input_ids.device)
        # input_ids: the encoder's special tokens and the decoder's class token alike
        return super().forward(
            input_ids, enc_position_ids, input_ids, dec_position_ids, enc_attention_mask=enc_attention_mask, **kw_args
        )

    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        CaiTEncoder.add_model_specific_args(parser)
        return super().add_model_specific_args(parser)
