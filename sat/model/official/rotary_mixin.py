"""``RotaryMixin``: rotary position embeddings added to a model built without them.

``LLaMAModel`` has rotary built into the backbone (``is_rotary_emb``); this is the original's
mixin form, for putting RoPE on any model. Its ``inv_freq`` is saved as
``mixins.<name>.rotary_emb.inv_freq``, the key ``LLaMAModel`` renames from old checkpoints.
"""

from __future__ import annotations

from sat.model.base_model import BaseMixin
from sat.model.position_embedding.triton_rotary_embeddings import FastRotaryEmbedding


class RotaryMixin(BaseMixin):
    """``attention_forward`` rotating queries and keys by ``position_ids`` (GPT-NeoX layout,
    ``hidden_size // num_heads`` channels) before the ``attention_fn`` hook. Absolute position
    embeddings, if the model has them, are still added: remove them for pure RoPE."""

    def __init__(self, hidden_size: int, num_heads: int, base: float = 10000):
        super().__init__()
        self.rotary_emb = FastRotaryEmbedding(hidden_size // num_heads, base=base)

    def attention_forward(self, hidden_states, mask, **kw_args):
        attention = self.transformer.layers[kw_args["layer_id"]].attention
        query, key, value = attention.heads(hidden_states, **kw_args)  # [b, np or nkv, s, hn]
        query, key = self.rotary_emb(query, key, kw_args["position_ids"])
        return attention.attend(query, key, value, mask, **kw_args)  # [b, s, h]
