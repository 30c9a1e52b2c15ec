"""BERT: the backbone with exact (erf) GELU, token-type embeddings (``bert-type``) and a
masked-LM head (``bert-final``). BERT is post-LN: build it with ``layernorm_order='post'``.

With ``--headless`` the masked-LM head is left out and the model outputs its final hidden states
(HF ``BertModel``'s ``last_hidden_state``); it then carries HF ``BertModel``'s pooler
(``bert-pooler``), applied on demand by ``pool``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.mpu import ColumnParallelLinear, gather_from_model_parallel_region
from sat.ops.layernorm import LayerNorm


class BertLMHead(torch.nn.Module):
    """``dense`` -> GELU -> ``layer_norm`` -> ``decoder`` (to the vocabulary)."""

    def __init__(self, vocab_size: int, hidden_size: int, layernorm_epsilon: float = 1e-5, skip_init: bool = False):
        super().__init__()
        self.dense = torch.nn.Linear(hidden_size, hidden_size)
        self.layer_norm = LayerNorm(hidden_size, eps=layernorm_epsilon)
        # Column-parallel so the vocabulary shards with model parallelism. It enters the
        # model-parallel region itself, after the replicated dense and layer norm, so their
        # gradients are whole on every rank.
        self.decoder = ColumnParallelLinear(hidden_size, vocab_size, gather_output=False, skip_init=skip_init)

    def forward(self, hidden_states: torch.Tensor, parallel_output: bool = False) -> torch.Tensor:
        hidden_states = self.layer_norm(F.gelu(self.dense(hidden_states)))  # [b, s, h]
        logits = self.decoder(hidden_states)  # [b, s, vocab / mp]
        return logits if parallel_output else gather_from_model_parallel_region(logits)


lm_head = BertLMHead  # the original's name: lm_head(vocab_size, hidden_size, layernorm_epsilon)


class BertFinalMixin(BaseMixin):
    """``final_forward``: the masked-LM head ``lm_head`` on the final hidden states."""

    def __init__(self, vocab_size: int, hidden_size: int, layernorm_epsilon: float = 1e-5, skip_init: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.lm_head = BertLMHead(vocab_size, hidden_size, layernorm_epsilon, skip_init=skip_init)

    def final_forward(self, logits, **kw_args):
        return self.lm_head(logits, kw_args["parallel_output"])


class BertPoolerMixin(BaseMixin):
    """The head of HF's headless ``BertModel``: the output stays the final hidden states, and
    ``pool(hidden_states)`` gives HF's ``pooler_output``, ``tanh(dense(hidden_states[:, 0]))``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = torch.nn.Linear(hidden_size, hidden_size)

    def final_forward(self, logits, **kw_args):
        return logits  # [b, s, h]

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))  # [b, h]


class BertTypeMixin(BaseMixin):
    """``word_embedding_forward``: word plus token-type embeddings. ``kw_args['token_type_ids']``
    (``[b, s]``) defaults to all zeros, as in HF."""

    def __init__(self, num_types: int, hidden_size: int):
        super().__init__()
        self.type_embeddings = torch.nn.Embedding(num_types, hidden_size)

    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        token_type_ids = kw_args.get("token_type_ids")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.transformer.word_embeddings(input_ids) + self.type_embeddings(token_type_ids)  # [b, s, h]


class BertModel(BaseModel):
    """BERT (post-LN, erf GELU, token types, masked-LM head): ``BertModel(args)`` or ``from_pretrained``."""

    def __init__(self, args, transformer=None, **kwargs):
        kwargs.setdefault("activation_func", F.gelu)
        super().__init__(args, transformer=transformer, **kwargs)
        skip_init = kwargs.get("skip_init", getattr(args, "skip_init", False))
        t = self.transformer
        if getattr(args, "headless", False):
            self.add_mixin("bert-pooler", BertPoolerMixin(t.hidden_size))
        else:
            final = BertFinalMixin(t.vocab_size, t.hidden_size, t.layernorm_epsilon, skip_init=skip_init)
            self.add_mixin("bert-final", final)
        self.add_mixin("bert-type", BertTypeMixin(args.num_types, t.hidden_size))

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("BERT", "BERT Configurations")
        group.add_argument("--num-types", type=int, default=2, help="Number of token types")
        group.add_argument(
            "--headless",
            action="store_true",
            help="no masked-LM head: output the final hidden states; carry HF BertModel's pooler (bert-pooler)",
        )
        return super().add_model_specific_args(parser)
