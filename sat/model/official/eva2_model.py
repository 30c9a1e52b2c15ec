"""EVA-02 (Fang et al. 2023): a ViT pre-trained by masked image modelling, predicting a teacher's
features for masked patches.

``EVA2Model`` is a ``BaseModel`` on ``[CLS]`` plus the patches, with the original's mixins:
``patch_embedding`` (``MaskedPatchEmbedMixin``: the patches that ``bool_masked_pos`` marks
become a learned ``mask_token``), ``eva2-attn`` (``EVA2AttnMixin``: 2-D vision rotary on the
patches' queries and keys), ``eva2-mlp`` (``SwiGLUMixin``: SwiGLU with a layer norm on the
hidden features, "sub-LN") and ``eva2-final`` (``EVA2FinalMixin``: the feature-prediction head
``lm_head`` on the patches, only the masked ones when ``bool_masked_pos`` is given).
"""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.official.vit_model import ImagePatchEmbeddingMixin, ViTProperty
from sat.model.position_embedding.vision_rotary_embeddings import VisionRotaryEmbeddingFast
from sat.mpu import get_model_parallel_world_size
from sat.ops.layernorm import LayerNorm


class MaskedPatchEmbedMixin(ImagePatchEmbeddingMixin):
    """Patch embeddings in which ``bool_masked_pos`` (``[b, num_patches]``, True = masked)
    replaces patches by ``mask_token``."""

    def __init__(self, in_channels: int, hidden_size: int, property: ViTProperty):
        super().__init__(in_channels, hidden_size, property)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, hidden_size))

    def embed_patches(self, **kw_args) -> torch.Tensor:
        patches = super().embed_patches(**kw_args)  # [b, num_patches, h]
        masked = kw_args.get("bool_masked_pos")
        if masked is None:
            return patches
        w = masked.unsqueeze(-1).type_as(patches)  # [b, num_patches, 1]
        return patches * (1 - w) + self.mask_token * w


class EVA2FinalMixin(BaseMixin):
    """``final_forward``: ``lm_head`` (``h -> predict_feature_dim``) on every patch
    (``[b, num_patches, d]``), or on the masked ones only (``[num_masked, d]``)."""

    def __init__(self, predict_feature_dim: int, hidden_size: int):
        super().__init__()
        self.lm_head = torch.nn.Linear(hidden_size, predict_feature_dim)

    def final_forward(self, logits, **kw_args):
        patches = logits[:, 1:]  # [b, num_patches, h], no [CLS]
        masked = kw_args.get("bool_masked_pos")
        if masked is not None:
            patches = patches[masked]  # [num_masked, h]
        return self.lm_head(patches)


class SwiGLUMixin(BaseMixin):
    """``mlp_forward``: ``dense_4h_to_h(ffn_ln(act(dense_h_to_4h(x)) * w2(x)))`` with SiLU;
    ``w2[i]`` and the sub-LN ``ffn_ln[i]`` are this mixin's, per layer."""

    def __init__(
        self,
        num_layers: int,
        in_features: int,
        hidden_features: int,
        act_layer: type[torch.nn.Module] = torch.nn.SiLU,
        drop: float = 0.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.w2 = torch.nn.ModuleList([torch.nn.Linear(in_features, hidden_features) for _ in range(num_layers)])
        self.act = act_layer()
        self.ffn_ln = torch.nn.ModuleList([LayerNorm(hidden_features, eps=eps) for _ in range(num_layers)])
        self.drop = torch.nn.Dropout(drop)

    def mlp_forward(self, hidden_states, **kw_args):
        i = kw_args["layer_id"]
        mlp = self.transformer.layers[i].mlp
        hidden = self.act(mlp.dense_h_to_4h(hidden_states)) * self.w2[i](hidden_states)  # [b, s, 4h]
        return self.drop(mlp.dense_4h_to_h(self.ffn_ln[i](hidden)))  # [b, s, h]


class EVA2AttnMixin(BaseMixin):
    """``attention_forward``: the layer's attention with the 2-D rotary embedding ``rope``
    applied to the patches' queries and keys (not to ``[CLS]``, token 0)."""

    def __init__(self, hidden_size: int, num_attention_heads: int, property: ViTProperty):
        super().__init__()
        half_head_dim = hidden_size // num_attention_heads // 2
        grid = property.image_size[0] // property.patch_size
        self.rope = VisionRotaryEmbeddingFast(dim=half_head_dim, pt_seq_len=grid)

    def rotate(self, heads: torch.Tensor) -> torch.Tensor:
        """``[b, n, 1 + num_patches, hn]`` with the patches rotated."""
        return torch.cat((heads[:, :, :1], self.rope(heads[:, :, 1:])), dim=-2)

    def attention_forward(self, hidden_states, mask, **kw_args):
        attention = self.transformer.layers[kw_args["layer_id"]].attention
        query, key, value = attention.heads(hidden_states, **kw_args)  # [b, n, s, hn] each
        query, key = self.rotate(query).type_as(value), self.rotate(key).type_as(value)
        return attention.attend(query, key, value, mask, **kw_args)  # [b, s, h]


class EVA2Model(BaseModel):
    """EVA-02. ``forward(input_ids, None, attention_mask, image=..., bool_masked_pos=...)``:
    ``input_ids`` is ``[b, 1]`` (the ``[CLS]`` token), ``image`` ``[b, c, H, W]``. Needs
    ``pre_len=1``, ``post_len=0`` and a square image; no model parallelism (the sub-LN
    normalises the whole hidden feature)."""

    def __init__(self, args, transformer=None, **kwargs):
        if (args.pre_len, args.post_len) != (1, 0):
            raise ValueError(f"EVA2Model needs pre_len=1 and post_len=0, got {args.pre_len} and {args.post_len}")
        if len(args.image_size) != 2 or args.image_size[0] != args.image_size[1]:
            raise ValueError(f"EVA2Model's rotary embedding needs a square image_size, got {args.image_size}")
        if get_model_parallel_world_size() > 1:
            raise ValueError("EVA2Model does not support model parallelism (its sub-LN spans the whole MLP)")
        property = ViTProperty.from_args(args)
        args.max_sequence_length = property.seq_len
        super().__init__(args, transformer=transformer, **kwargs)
        self.property = self.transformer.property = property
        hidden_size = args.hidden_size
        self.add_mixin("patch_embedding", MaskedPatchEmbedMixin(args.in_channels, hidden_size, property))
        self.add_mixin("eva2-final", EVA2FinalMixin(args.predict_feature_dim, hidden_size))
        inner = self.transformer.layers[0].mlp.inner_hidden_size
        self.add_mixin("eva2-mlp", SwiGLUMixin(args.num_layers, hidden_size, inner, eps=args.layernorm_epsilon))
        self.add_mixin("eva2-attn", EVA2AttnMixin(hidden_size, args.num_attention_heads, property))

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return self.transformer.position_embeddings.weight.unsqueeze(0)  # [1, seq_len, h]

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("EVA2", "EVA2 Configurations")
        group.add_argument("--image-size", nargs="+", type=int, default=[224, 224])
        group.add_argument("--pre-len", type=int, default=1)  # [CLS]
        group.add_argument("--post-len", type=int, default=0)
        group.add_argument("--in-channels", type=int, default=3)
        group.add_argument("--patch-size", type=int, default=14)
        group.add_argument("--predict-feature-dim", type=int, default=768, help="width of the predicted features")
        return super().add_model_specific_args(parser)
