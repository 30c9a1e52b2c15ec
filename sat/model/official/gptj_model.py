"""GPT-J: parallel attention and MLP on one layer norm, partial interleaved rotary, untied head.

Every part is a backbone option, fixed here:

- ``layernorm_order="parallel"``: ``x + attn(ln(x)) + mlp(ln(x))``, one norm per layer;
- rotary embeddings (``is_rotary_emb``) on the first ``--rotary-dim`` channels of each head (all
  when unset), in the pair layout (``rotary_interleaved``: channel ``2i`` with ``2i + 1``);
- no attention biases (``use_bias=False``), a biased MLP (``use_mlp_bias``) with tanh GELU;
- an untied output head with a bias, the mixin ``lm`` (none with ``--headless``: the output is
  the final hidden states, HF's ``GPTJModel``).

The original library had no GPT-J; class, mixin and argument names follow its LLaMA.
"""

from __future__ import annotations

from sat.model.base_model import BaseModel
from sat.model.encoder_decoder_model import EncoderFinalMixin
from sat.model.official.gpt2_model import GPT2FinalMixin
from sat.mpu.utils import gelu

# The architecture GPT-J fixes; everything else (sizes, rotary_dim) comes from args.
GPTJ_ARCHITECTURE = dict(
    layernorm_order="parallel",
    is_rotary_emb=True,
    rotary_interleaved=True,
    use_bias=False,
    use_mlp_bias=True,
    activation_func=gelu,
)


class GPTJModel(BaseModel):
    """GPT-J: parallel attention and MLP, partial interleaved rotary, untied biased head."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **{**GPTJ_ARCHITECTURE, **kwargs})
        if getattr(args, "headless", False):
            self.add_mixin("final", EncoderFinalMixin())  # hidden states out, as an encoder's
        else:
            head = GPT2FinalMixin(
                args.vocab_size, args.hidden_size, skip_init=getattr(args, "skip_init", False), bias=True
            )
            self.add_mixin("lm", head)
        # Kept for the way back to transformers (sat.hf), whose config carries them.
        self.bos_token_id = getattr(args, "bos_token_id", 50256)
        self.eos_token_id = getattr(args, "eos_token_id", 50256)
        self.pad_token_id = getattr(args, "pad_token_id", -1)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("GPTJ", "GPT-J Configurations")
        group.add_argument("--bos-token-id", type=int, default=50256)
        group.add_argument("--eos-token-id", type=int, default=50256)
        group.add_argument("--pad-token-id", type=int, default=-1)
        group.add_argument("--headless", action="store_true", help="no LM head: output the final hidden states")
        return parser
