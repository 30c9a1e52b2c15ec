"""GPT-2: the backbone with tanh-GELU and an output projection of its own (``gpt2-final``), or
with ``--headless`` none: the output is the final hidden states (HF's ``GPT2Model``)."""

from __future__ import annotations

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.encoder_decoder_model import EncoderFinalMixin
from sat.mpu import ColumnParallelLinear, vocab_parallel_logits
from sat.mpu.utils import gelu
from sat.quantization.layers import linear_weight


class GPT2FinalMixin(BaseMixin):
    """``final_forward``: project hidden states to the vocabulary with ``lm_head`` (with a bias
    for ``bias=True``, as GPT-J's)."""

    def __init__(self, vocab_size: int, hidden_size: int, skip_init: bool = False, bias: bool = False):
        super().__init__()
        # Column-parallel so the vocabulary shards with model parallelism.
        self.lm_head = ColumnParallelLinear(
            hidden_size, vocab_size, bias=bias, gather_output=False, skip_init=skip_init
        )

    def final_forward(self, logits, **kw_args):
        # linear_weight: a head quantized by sat.quantization.quantize multiplies in logits' dtype.
        weight = linear_weight(self.lm_head, logits.dtype)
        bias = None if self.lm_head.bias is None else self.lm_head.bias.to(logits.dtype)
        return vocab_parallel_logits(logits, weight, kw_args["parallel_output"], bias)


class GPT2Model(BaseModel):
    """GPT-2: tanh-GELU backbone with its own output projection (none with ``--headless``)."""

    def __init__(self, args, transformer=None, **kwargs):
        kwargs.setdefault("activation_func", gelu)
        super().__init__(args, transformer=transformer, **kwargs)
        if getattr(args, "headless", False):
            self.add_mixin("final", EncoderFinalMixin())  # hidden states out, as an encoder's
        else:
            final = GPT2FinalMixin(args.vocab_size, args.hidden_size, skip_init=getattr(args, "skip_init", False))
            self.add_mixin("gpt2-final", final)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("GPT2", "GPT2 Configurations")
        group.add_argument("--headless", action="store_true", help="no LM head: output the final hidden states")
        return parser
