"""RoBERTa: BERT without token types (as the original library), and HF's position convention.

HF RoBERTa numbers positions from ``padding_idx + 1`` (padding tokens get ``padding_idx``), and
its position table keeps those leading rows, so sat keeps the whole table and the caller passes
HF's position ids: ``roberta_position_ids(input_ids)``. HF RoBERTa also adds a token-type
embedding with a single type to every token; ``--use-token-types`` keeps ``bert-type`` for it
(models converted from HF set it; the original library's RoBERTa checkpoints have none).
"""

from __future__ import annotations

import torch

from sat.model.official.bert_model import BertModel


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int = 1) -> torch.Tensor:
    """HF RoBERTa's position ids for ``input_ids [b, s]``: ``padding_idx + 1, + 2, ...`` over the
    non-padding tokens, ``padding_idx`` on padding."""
    real = input_ids.ne(padding_idx).long()  # [b, s]
    return real.cumsum(dim=1) * real + padding_idx


class RobertaModel(BertModel):
    """RoBERTa: BERT without token types, with HF's position numbering from ``padding_idx + 1``."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        if not getattr(args, "use_token_types", False):
            self.del_mixin("bert-type")

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("RoBERTa", "RoBERTa Configurations")
        group.add_argument(
            "--use-token-types",
            action="store_true",
            help="keep the token-type embedding (bert-type, --num-types types), as HF's RoBERTa has",
        )
        return super().add_model_specific_args(parser)
