"""``ClassificationModel``: BERT with ``MLPHeadMixin`` in place of its head, as in the original
library's README quick tour, plus the batching and accuracy code the scripts share."""

from __future__ import annotations

import torch

from sat.model import BertModel
from sat.model.mixins import MLPHeadMixin


class ClassificationModel(BertModel):
    """A BERT encoder whose first token's final hidden state goes through a 2-layer MLP to
    ``--num-labels`` logits."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        for head in ("bert-final", "bert-pooler"):  # both define final_forward, as the MLP does
            if head in self.mixins:
                self.del_mixin(head)
        self.add_mixin("classification_head", MLPHeadMixin(args.hidden_size, 256, args.num_labels))

    def disable_untrainable_params(self):
        # The word embeddings are half the parameters: frozen, they cost no optimizer state or
        # gradient all-reduce, and words the finetuning data never shows keep their meaning.
        self.transformer.word_embeddings.requires_grad_(False)

    @classmethod
    def add_model_specific_args(cls, parser):
        parser = super().add_model_specific_args(parser)
        parser.add_argument_group("ClassificationModel").add_argument("--num-labels", type=int, default=2)
        return parser


def collate(samples: list[tuple[list[int], int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad ``(token ids, label)`` samples to the longest: ids, positions, mask and labels."""
    length = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(samples), length, dtype=torch.long)
    for row, (tokens, _) in enumerate(samples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return {
        "input_ids": ids,
        "position_ids": torch.arange(length).expand_as(ids),
        "attention_mask": mask[:, None, None, :],  # [b, 1, 1, s], 1 = attend
        "labels": torch.tensor([label for _, label in samples]),
    }


def class_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[b, num_labels]``: the head's output at the first ([CLS]) token."""
    logits = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"])[0]
    return logits[:, 0].float()


@torch.no_grad()
def accuracy(model, tokenizer, pairs: list[tuple[int, str]], batch_size: int = 50) -> tuple[float, list[int]]:
    """Accuracy on ``(label, sentence)`` pairs, and the predicted labels."""
    model.eval()
    predictions: list[int] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate([(tokenizer.encode(text), label) for label, text in chunk])
        predictions += class_logits(model, batch).argmax(-1).tolist()
    correct = sum(int(p == label) for p, (label, _) in zip(predictions, pairs))
    return correct / len(pairs), predictions
