"""ChatGLM4 (GLM-4): ChatGLM2's architecture with rotary in the half-split layout (channel
``i`` with ``i + rot / 2``) on the first half of each head's channels.

transformers' native ``GlmForCausalLM`` and ``Glm4ForCausalLM`` (the latter with the sandwich
layer norms) translate to this class (``sat.hf``), q/k rows reordered from their pair layout.
The special token ids are kept for the way back to transformers.
"""

from __future__ import annotations

from sat.model.base_model import BaseMixin
from sat.model.official.chatglm2_model import ChatGLM2AttnMixin, ChatGLM2Model
from sat.model.official.chatglm2_model import SwiGLUMixin as SwiGLUMixin
from sat.model.official.chatglm_final import ChatGLMFinalMixin

__all__ = ["ChatGLM4AttnMixin", "ChatGLM4Model", "ChatGLMFinalMixin", "SwiGLUMixin"]


class ChatGLM4AttnMixin(ChatGLM2AttnMixin):
    """ChatGLM2's attention with half-split rotary (``interleaved=False``)."""

    def __init__(
        self, hidden_size: int, num_heads: int, max_seq_len: int, head_size: int | None = None, base: float = 10000.0
    ):
        super().__init__(hidden_size, num_heads, max_seq_len, head_size=head_size, base=base, interleaved=False)


class ChatGLM4Model(ChatGLM2Model):
    """GLM-4: ChatGLM2 with half-split rotary on the first half of each head's channels."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.pad_token_id = getattr(args, "pad_token_id", None)
        self.bos_token_id = getattr(args, "bos_token_id", None)
        self.eos_token_id = getattr(args, "eos_token_id", None)

    def _attention_mixin(self, args) -> BaseMixin:
        t = self.transformer
        return ChatGLM4AttnMixin(
            t.hidden_size, t.num_attention_heads, t.max_sequence_length, t.config.head_size, t.rotary_base
        )

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("ChatGLM4", "ChatGLM4 Configurations")
        group.add_argument("--pad-token-id", type=int, default=None)
        group.add_argument("--bos-token-id", type=int, default=None)
        group.add_argument("--eos-token-id", type=int, nargs="+", default=None)
        return super().add_model_specific_args(parser)
