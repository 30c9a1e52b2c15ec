"""Position embeddings that mixins and the backbone share, and the original's helpers.

``RotaryEmbedding`` here is the backbone's (queries and keys in, rotated queries and keys out);
the original's cos/sin-table class of that name is ``rotary_embeddings.RotaryEmbedding``.
"""

from sat.model.position_embedding.rotary import RotaryEmbedding, rotate_interleaved, rotate_with
from sat.model.position_embedding.rotary_embeddings import (
    apply_rotary_pos_emb,
    apply_rotary_pos_emb_fused,
    apply_rotary_pos_emb_index,
    apply_rotary_pos_emb_index_fused,
    apply_rotary_pos_emb_index_torch,
    apply_rotary_pos_emb_torch,
)
from sat.model.position_embedding.sincos2d import get_2d_sincos_pos_embed
from sat.model.position_embedding.triton_rotary_embeddings import FastRotaryEmbedding
from sat.model.position_embedding.vision_rotary_embeddings import VisionRotaryEmbedding, VisionRotaryEmbeddingFast

__all__ = [
    "FastRotaryEmbedding",
    "RotaryEmbedding",
    "VisionRotaryEmbedding",
    "VisionRotaryEmbeddingFast",
    "apply_rotary_pos_emb",
    "apply_rotary_pos_emb_fused",
    "apply_rotary_pos_emb_index",
    "apply_rotary_pos_emb_index_fused",
    "apply_rotary_pos_emb_index_torch",
    "apply_rotary_pos_emb_torch",
    "get_2d_sincos_pos_embed",
    "rotate_interleaved",
    "rotate_with",
]
