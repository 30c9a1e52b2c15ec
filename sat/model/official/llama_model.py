"""LLaMA: RMSNorm, SwiGLU MLP, rotary embeddings (MHA or GQA) and an untied output head ``lm``
(none with ``--headless``: the output is the final hidden states, HF's ``LlamaModel``).

Rotary and the gated MLP are backbone options (``is_rotary_emb``, ``is_gated_mlp``), always
on here. Checkpoints of the original library written before it had them built in kept them in
the ``rotary`` and ``mlp`` mixins (issue #177); their keys are renamed when loaded.
"""

from __future__ import annotations

import re

import torch.nn.functional as F

from sat.model.base_model import BaseModel
from sat.model.encoder_decoder_model import EncoderFinalMixin
from sat.model.official.gated_mlp import LLaMAMlpMixin as LLaMAMlpMixin  # the original's names, here
from sat.model.official.gpt2_model import GPT2FinalMixin
from sat.model.official.rotary_mixin import RotaryMixin as RotaryMixin
from sat.ops.layernorm import RMSNorm


class LMMixin(GPT2FinalMixin):
    """``final_forward`` through an untied ``lm_head``: the same head as GPT-2's."""


# Old key (relative to the model) -> the backbone's key for the same tensor.
LEGACY_KEYS = (
    (re.compile(r"mixins\.mlp\.gate_proj\.(\d+)\.weight"), r"transformer.layers.\1.mlp.dense_h_to_4h_gate.weight"),
    (re.compile(r"mixins\.rotary\.rotary_emb\.inv_freq"), "transformer.position_embeddings.inv_freq"),
)


def rename_legacy_keys(module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: move the old mixins' tensors to the backbone's names."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        for pattern, new in LEGACY_KEYS:
            if pattern.fullmatch(key[len(prefix) :]):
                state_dict[prefix + pattern.sub(new, key[len(prefix) :])] = state_dict.pop(key)


class LLaMAModel(BaseModel):
    """LLaMA: RMSNorm, SwiGLU, rotary (MHA or GQA), untied head ``lm`` (none with ``--headless``)."""

    def __init__(self, args, transformer=None, layernorm=RMSNorm, activation_func=F.silu, **kwargs):
        kwargs = {"is_rotary_emb": True, "is_gated_mlp": True, "init_method_std": 0.01, **kwargs}
        super().__init__(args, transformer=transformer, layernorm=layernorm, activation_func=activation_func, **kwargs)
        if getattr(args, "headless", False):
            self.add_mixin("final", EncoderFinalMixin())  # hidden states out, as an encoder's
        else:
            self.add_mixin(
                "lm", LMMixin(args.vocab_size, args.hidden_size, skip_init=getattr(args, "skip_init", False))
            )
        # Kept for the way back to transformers (sat.hf), whose config carries them.
        self.bos_token_id = getattr(args, "bos_token_id", 0)
        self.eos_token_id = getattr(args, "eos_token_id", 1)
        self.pad_token_id = getattr(args, "pad_token_id", -1)
        self.register_load_state_dict_pre_hook(rename_legacy_keys)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("LLaMA", "LLaMA Configurations")
        group.add_argument("--bos-token-id", type=int, default=0)
        group.add_argument("--eos-token-id", type=int, default=1)
        group.add_argument("--pad-token-id", type=int, default=-1)
        group.add_argument("--headless", action="store_true", help="no LM head: output the final hidden states")
        return parser
