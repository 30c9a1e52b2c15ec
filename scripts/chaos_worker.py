"""One rank of a ``scripts/chaos_resume.py`` run: ``training_main`` on a tiny causal language model.

Started by the harness with ``RANK``/``WORLD_SIZE``/``MASTER_PORT`` set and sat's flags on the
command line. It appends what the harness compares to ``$SAT_CHAOS_OUT/rank<r>.jsonl``, one JSON
object a line, flushed as it goes (a SIGKILL loses nothing written before it):

- ``{"train": i, "loss": x}`` for each micro-batch of training iteration ``i``;
- ``{"eval": i, "loss": x}`` for each validation batch of the evaluation at iteration ``i``;
- ``{"save": i, "replaces": n}`` once checkpoint ``i`` is written (its ``os.replace`` calls:
  every atomic file write, the directory rename and ``latest`` each end in one);
- ``{"done": i}`` at the end, after the final weights went to ``final_rank<r>.pt``.

``SAT_CHAOS_PAUSE`` stops the process, for the harness to SIGKILL, at a chosen moment:
``save:<iteration>:<rank>:<k>`` right before the k-th ``os.replace`` of that save on that rank
(after its file is written, before it takes its name), ``eval:<iteration>:<rank>`` at the first
validation batch of that evaluation. The process writes ``$SAT_CHAOS_OUT/paused`` and sleeps.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

SEQ_LEN = 12


class RandomTokens(torch.utils.data.Dataset):
    """Sequences of tokens drawn from a generator seeded by the index (and the split)."""

    def __init__(self, size: int, vocab: int, seed: int):
        self.size, self.vocab, self.seed = size, vocab, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        return torch.randint(self.vocab, (SEQ_LEN + 1,), generator=generator)  # [SEQ_LEN + 1]


def create_dataset(path: str, args) -> RandomTokens:
    return RandomTokens(512 if path == "train" else 64, args.vocab_size, seed=1 if path == "train" else 2)


class Record:
    """This rank's ``rank<r>.jsonl``."""

    def __init__(self, out: str, rank: int):
        self.file = open(os.path.join(out, f"rank{rank}.jsonl"), "a", buffering=1)

    def write(self, **entry) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())


def _pause(out: str) -> None:
    with open(os.path.join(out, "paused"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(60)


def _pause_spec(rank: int) -> tuple[str, int, int] | None:
    """``(kind, iteration, k)`` of ``SAT_CHAOS_PAUSE`` when it is meant for this rank."""
    spec = os.environ.get("SAT_CHAOS_PAUSE", "")
    if not spec:
        return None
    kind, iteration, target_rank, *rest = spec.split(":")
    if int(target_rank) != rank:
        return None
    return kind, int(iteration), int(rest[0]) if rest else 0


def _instrument_saves(record: Record, pause: tuple[str, int, int] | None, out: str) -> None:
    """Count the ``os.replace`` calls of every checkpoint save (pausing at the chosen one)."""
    import sat.training.deepspeed_training as training

    real_replace, real_save = os.replace, training.save_checkpoint
    saving: dict = {}

    def counting_replace(src, dst, *args, **kwargs):
        if saving:
            if pause is not None and pause[0] == "save" and saving["iteration"] == pause[1]:
                if saving["replaces"] == pause[2]:
                    _pause(out)
            saving["replaces"] += 1
        return real_replace(src, dst, *args, **kwargs)

    def counted_save(iteration, *args, **kwargs):
        saving.update(iteration=iteration, replaces=0)
        try:
            real_save(iteration, *args, **kwargs)
        finally:
            record.write(save=iteration, replaces=saving["replaces"])
            saving.clear()

    os.replace = counting_replace
    training.save_checkpoint = counted_save


def main() -> None:
    from sat import get_args
    from sat.model import BaseModel
    from sat.training.deepspeed_training import training_main
    from sat.training.utils import exit_process

    out = os.environ["SAT_CHAOS_OUT"]
    rank = int(os.environ.get("RANK", "0"))
    record = Record(out, rank)
    pause = _pause_spec(rank)
    _instrument_saves(record, pause, out)
    args = get_args(sys.argv[1:])

    def forward_step(data_iterator, model, args, timers):
        tokens = next(data_iterator)  # [b, SEQ_LEN + 1]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        positions = torch.arange(SEQ_LEN).expand_as(inputs)  # [b, SEQ_LEN]
        logits = model(inputs, positions, -1)[0].float()  # [b, SEQ_LEN, vocab]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if torch.is_grad_enabled():
            record.write(train=args.iteration + 1, loss=loss.item())
        else:
            if pause is not None and pause[:2] == ("eval", args.iteration):
                _pause(out)
            record.write(eval=args.iteration, loss=loss.item())
        return loss

    engine = training_main(args, BaseModel, forward_step, create_dataset)

    import deepspeed

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        # FSDP's parameters are DTensors: their full values, as plain tensors.
        weights = {
            name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in module.named_parameters()
        }
    torch.save(weights, os.path.join(out, f"final_rank{rank}.pt"))
    record.write(done=args.iteration)
    exit_process()


if __name__ == "__main__":
    main()
