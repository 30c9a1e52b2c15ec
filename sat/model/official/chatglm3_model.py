"""ChatGLM3: ChatGLM2's architecture with a rotary base scaled by ``--base-scale`` (the HF
config's ``rope_ratio``: base ``rotary_base * base_scale``) and the gate on the ``mlp``
mixin's ``w2``, which is always used."""

from __future__ import annotations

from sat.model.base_model import BaseMixin
from sat.model.official.chatglm2_model import ChatGLM2AttnMixin, ChatGLM2Model
from sat.model.official.chatglm2_model import SwiGLUMixin as _ChatGLM2SwiGLUMixin
from sat.model.official.chatglm_final import ChatGLMFinalMixin

__all__ = ["ChatGLM3AttnMixin", "ChatGLM3Model", "ChatGLMFinalMixin", "SwiGLUMixin"]


class ChatGLM3AttnMixin(ChatGLM2AttnMixin):
    """ChatGLM2's attention with the rotary base ``base * base_scale``."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        max_seq_len: int,
        base_scale: float = 1.0,
        head_size: int | None = None,
        base: float = 10000.0,
    ):
        super().__init__(hidden_size, num_heads, max_seq_len, head_size=head_size, base=base * base_scale)


class SwiGLUMixin(_ChatGLM2SwiGLUMixin):
    """ChatGLM3's MLP: ``dense_4h_to_h(act(w2[layer](x)) * dense_h_to_4h(x))``."""

    gate_is_w2 = True


class ChatGLM3Model(ChatGLM2Model):
    """ChatGLM3-6B: ChatGLM2 with a scaled rotary base (``--base-scale``)."""

    def _attention_mixin(self, args) -> BaseMixin:
        t = self.transformer
        return ChatGLM3AttnMixin(
            t.hidden_size,
            t.num_attention_heads,
            t.max_sequence_length,
            args.base_scale,
            t.config.head_size,
            t.rotary_base,
        )

    def _mlp_mixin(self, args) -> BaseMixin:
        t = self.transformer  # added even with is_gated_mlp, as the original did
        return SwiGLUMixin(t.num_layers, t.hidden_size, t.inner_hidden_size, bias=t.use_bias)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("ChatGLM3", "ChatGLM3 Configurations")
        group.add_argument("--base-scale", type=float, default=1.0, help="rotary base multiplier (rope_ratio)")
        return super().add_model_specific_args(parser)
