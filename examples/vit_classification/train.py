"""Train a tiny DeiT image classifier from scratch with ``training_main`` on generated images:
noise tinted red, green or blue, which is the class (no download).

Both heads learn the labels: with no teacher at hand, the distillation head gets the true
labels where DeiT would give it a teacher's predictions. Run it as one process::

    python examples/vit_classification/train.py --train-data train --valid-data valid \
        --train-iters 60 --batch-size 32 --lr 2e-3 --save OUT
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from sat import get_args, training_main
from sat.model.official import DeiTModel
from sat.training.utils import exit_process

NUM_CLASSES = 3  # red, green, blue
# A tiny DeiT over 16x16 images in 4x4 patches; flags on the command line override these.
MODEL = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --image-size 16 16 --patch-size 4 --num-classes 3"


class TintedImages(torch.utils.data.Dataset):
    """``size`` images ``[3, s, s]`` of Gaussian noise tinted towards colour channel ``label``
    (its pixels shifted by one standard deviation); fixed by ``seed``."""

    def __init__(self, size: int, image_size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
        self.images = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.images[torch.arange(size), self.labels] += 1.0  # [size, s, s]: the tinted channel

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "labels": self.labels[index]}


def heads(model, images: torch.Tensor) -> torch.Tensor:
    """``[b, 2, classes]``: the ``[CLS]`` and the distillation head's logits."""
    tokens = torch.arange(2, device=images.device).expand(images.shape[0], -1)  # [CLS], distillation
    return model(tokens, None, None, image=images, separate_heads=True)[0].float()


def forward_step(data_iterator, model, args, timers):
    """Cross entropy of both heads, with the accuracy of their average as a metric."""
    timers("batch generator").start()
    batch = {key: value.to(args.device) for key, value in next(data_iterator).items()}
    timers("batch generator").stop()
    logits = heads(model, batch["image"])
    loss = (F.cross_entropy(logits[:, 0], batch["labels"]) + F.cross_entropy(logits[:, 1], batch["labels"])) / 2
    accuracy = (logits.mean(1).argmax(-1) == batch["labels"]).float().mean()
    return loss, {"acc": accuracy}


def create_dataset_function(path: str, args):
    """``path`` only names the split: each gets its own seed."""
    return TintedImages(2048 if path == "train" else 256, args.image_size[0], seed=sum(map(ord, path)))


@torch.no_grad()
def accuracy(model, dataset: TintedImages) -> float:
    """Accuracy of the averaged heads (DeiT's prediction) on all of ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    predicted = heads(model, dataset.images.to(device)).mean(1).argmax(-1).cpu()
    model.train()
    return (predicted == dataset.labels).float().mean().item()


def main() -> None:
    parser = DeiTModel.add_model_specific_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = get_args(MODEL.split() + sys.argv[1:], parser=parser)
    model = DeiTModel(args)
    test = TintedImages(256, args.image_size[0], seed=0)
    before = accuracy(model, test)
    engine = training_main(args, model, forward_step, create_dataset_function)
    if torch.distributed.get_rank() == 0:
        print(f"test accuracy: {100 * before:.1f}% before -> {100 * accuracy(engine.module, test):.1f}% after")
    exit_process()


if __name__ == "__main__":
    main()
