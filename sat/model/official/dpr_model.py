"""DPR (dense passage retrieval): BERT encoders whose output is the ``[CLS]`` vector
(``DPRQuestionEncoder`` for questions, ``DPRContextEncoder`` for passages; optionally projected
to ``--projection-dim``), and ``DPRReader``, which scores answer spans in passages.

All three are post-LN BERT with exact GELU and token types (``dpr-type``); the head is
``dpr-final``. Their outputs, as the original's: the encoders ``[b, h]`` (``[b, projection_dim]``),
the reader the tuple ``(start_logits [b, s], end_logits [b, s], relevance_logits [b])``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.official.bert_model import BertTypeMixin

DPRTypeMixin = BertTypeMixin  # the original's name: word plus token-type embeddings


class DPREncoderFinalMixin(BaseMixin):
    """``final_forward``: the ``[CLS]`` hidden state, through ``encode_proj`` when
    ``projection_dim > 0``."""

    def __init__(self, hidden_size: int = 0, projection_dim: int = 0):
        super().__init__()
        self.encode_proj = torch.nn.Linear(hidden_size, projection_dim) if projection_dim > 0 else None

    def final_forward(self, logits, **kw_args):
        pooled = logits[:, 0, :]  # [b, h]
        return pooled if self.encode_proj is None else self.encode_proj(pooled)  # [b, projection_dim]


class DPRReaderFinalMixin(BaseMixin):
    """``final_forward``: span start and end logits per token (``qa_outputs``) and a relevance
    logit per passage (``qa_classifier`` on ``[CLS]``)."""

    def __init__(self, hidden_size: int, projection_dim: int = 0):
        super().__init__()
        if projection_dim > 0:
            # transformers' reader applies these heads to the hidden states, so a projection
            # there cannot run: its heads would expect projection_dim inputs.
            raise ValueError(f"DPRReader with projection_dim={projection_dim} is not supported (0 only)")
        self.qa_outputs = torch.nn.Linear(hidden_size, 2)
        self.qa_classifier = torch.nn.Linear(hidden_size, 1)

    def final_forward(self, logits, **kw_args):
        start_logits, end_logits = self.qa_outputs(logits).unbind(-1)  # [b, s] each
        relevance_logits = self.qa_classifier(logits[:, 0]).squeeze(-1)  # [b]
        return start_logits.contiguous(), end_logits.contiguous(), relevance_logits


class DPRBase(BaseModel):
    """What the three share: BERT with token types (``dpr-type``) and the head ``dpr_final``
    gives (``dpr-final``). Build it with ``layernorm_order='post'``, as BERT."""

    def __init__(self, args, transformer=None, **kwargs):
        kwargs.setdefault("activation_func", F.gelu)
        super().__init__(args, transformer=transformer, **kwargs)
        hidden_size = self.transformer.hidden_size
        self.add_mixin("dpr-type", DPRTypeMixin(args.num_types, hidden_size))
        self.add_mixin("dpr-final", self.dpr_final(hidden_size, args.projection_dim))

    def dpr_final(self, hidden_size: int, projection_dim: int) -> BaseMixin:
        raise NotImplementedError(f"{type(self).__name__} names no head")

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group(cls.__name__, f"{cls.__name__} Configurations")
        group.add_argument("--num-types", type=int, default=2, help="Number of token types")
        group.add_argument("--projection-dim", type=int, default=0, help="project [CLS] to this size (0: none)")
        return super().add_model_specific_args(parser)


class DPRQuestionEncoder(DPRBase):
    """Questions -> ``[CLS]`` vectors ``[b, h]``."""

    def dpr_final(self, hidden_size: int, projection_dim: int) -> BaseMixin:
        return DPREncoderFinalMixin(hidden_size, projection_dim)


class DPRContextEncoder(DPRQuestionEncoder):
    """Passages -> ``[CLS]`` vectors ``[b, h]``: the question encoder's network, its own weights."""


class DPRReader(DPRBase):
    """``[question; title; passage]`` rows -> ``(start_logits, end_logits, relevance_logits)``."""

    def dpr_final(self, hidden_size: int, projection_dim: int) -> BaseMixin:
        return DPRReaderFinalMixin(hidden_size, projection_dim)
