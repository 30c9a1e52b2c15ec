"""Finetune a BERT checkpoint for sentence classification with ``training_main``.

Data: TSV files with a header and ``label<TAB>sentence`` lines (``topics.py`` writes some).
Launch it with ``finetune.sh`` (DeepSpeed launcher), or directly as one process::

    python finetune.py --pretrained CKPT --num-labels 4 --train-data train.tsv \
        --valid-data valid.tsv --train-iters 60 --batch-size 16 --lr 1e-4 --save OUT
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import ClassificationModel, class_logits, collate  # noqa: E402

from sat import get_args, get_tokenizer, training_main  # noqa: E402
from sat.data_utils import TSVDataset  # noqa: E402
from sat.training.utils import exit_process  # noqa: E402


def forward_step(data_iterator, model, args, timers):
    """Cross entropy over the batch, with accuracy as a metric."""
    timers("batch generator").start()
    batch = {key: value.to(args.device) for key, value in next(data_iterator).items()}
    timers("batch generator").stop()
    logits = class_logits(model, batch)
    loss = F.cross_entropy(logits, batch["labels"])
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
    return loss, {"acc": accuracy}


def create_dataset_function(path: str, args):
    tokenizer = get_tokenizer(args)

    def process(fields: list[str]) -> tuple[list[int], int]:
        label, sentence = fields
        return tokenizer.encode(sentence), int(label)

    return TSVDataset(path, process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a sat BERT checkpoint folder (convert.py makes one)")
    parser = ClassificationModel.add_model_specific_args(parser)
    args = get_args(parser=parser)
    # The checkpoint's architecture and tokenizer; in finetune mode the new head is initialised.
    model, args = ClassificationModel.from_pretrained(args.pretrained, args)
    pad_id = get_tokenizer(args).pad_token_id or 0
    training_main(args, model, forward_step, create_dataset_function, collate_fn=partial(collate, pad_id=pad_id))
    exit_process()


if __name__ == "__main__":
    main()
