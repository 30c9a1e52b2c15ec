"""Position embeddings that mixins and the backbone share."""

from sat.model.position_embedding.rotary import RotaryEmbedding, rotate_with

__all__ = ["RotaryEmbedding", "rotate_with"]
