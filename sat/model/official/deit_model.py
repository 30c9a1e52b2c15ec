"""DeiT: a ViT with a second special token, the distillation token, that a second classifier
reads (trained to match a teacher's predictions, Touvron et al. 2021).

The sequence is ``[CLS]``, the distillation token (word-embedding rows 0 and 1, ``pre_len=2``),
then the patches. The head (``cls``) averages the two classifiers, as DeiT does at inference;
``separate_heads=True`` in the forward call returns both, for the distillation loss.
``--cls-only`` keeps only the ``[CLS]`` classifier (HF's ``DeiTForImageClassification``) and
``--headless`` gives the final hidden states with a pooler (HF's ``DeiTModel``).
"""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin
from sat.model.official.vit_model import ViTModel


class DistilledClsMixin(BaseMixin):
    """``final_forward``: ``classifier`` on ``[CLS]`` and ``distillation_classifier`` on the
    distillation token, averaged; with ``separate_heads=True`` both, stacked."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = torch.nn.Linear(hidden_size, num_classes)
        self.distillation_classifier = torch.nn.Linear(hidden_size, num_classes)

    def final_forward(self, logits, separate_heads: bool = False, **kw_args):
        cls_logits = self.classifier(logits[:, 0])  # [b, num_classes]
        distillation_logits = self.distillation_classifier(logits[:, 1])  # [b, num_classes]
        if separate_heads:
            return torch.stack([cls_logits, distillation_logits], dim=1)  # [b, 2, num_classes]
        return (cls_logits + distillation_logits) / 2  # [b, num_classes]


class DeiTModel(ViTModel):
    """``ViTModel`` with ``pre_len=2`` (``[CLS]`` and the distillation token), the word
    embeddings holding just the special tokens (``vocab_size = pre_len + post_len``) and, unless
    ``--cls-only`` or ``--headless``, the two-classifier head ``DistilledClsMixin``."""

    def __init__(self, args, transformer=None, **kwargs):
        if args.pre_len < 2:
            raise ValueError(f"DeiT needs pre_len >= 2 ([CLS] and the distillation token), got {args.pre_len}")
        # The vocabulary is the special tokens, whatever --vocab-size said (written back, as ViT
        # writes back max_sequence_length).
        kwargs["vocab_size"] = args.vocab_size = args.pre_len + args.post_len
        super().__init__(args, transformer=transformer, **kwargs)
        if "cls" in self.mixins and not args.cls_only:
            self.del_mixin("cls")
            self.add_mixin("cls", DistilledClsMixin(self.transformer.hidden_size, args.num_classes))

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("DeiT", "DeiT Configurations")
        group.add_argument(
            "--cls-only",
            action="store_true",
            help="one classifier on [CLS], no distillation classifier (HF's DeiTForImageClassification)",
        )
        parser = super().add_model_specific_args(parser)
        parser.set_defaults(pre_len=2)  # [CLS] and the distillation token
        return parser
