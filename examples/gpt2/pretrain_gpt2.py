"""Pretrain a small GPT-2 from scratch with ``training_main``, on byte tokens that
``prepare_data.py`` wrote, then let it continue a prompt.

Launch it with ``pretrain.sh`` (DeepSpeed launcher), or directly as one process::

    python pretrain_gpt2.py --train-data data.bin --split 95,5,0 --max-sequence-length 128 \
        --num-layers 4 --hidden-size 128 --num-attention-heads 4 --vocab-size 256 --train-iters 300
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sat import get_args, training_main
from sat.data_utils import BinaryDataset
from sat.generation.autoregressive_sampling import filling_sequence
from sat.generation.sampling_strategies import BaseStrategy
from sat.model import GPT2Model
from sat.model.mixins import CachedAutoregressiveMixin
from sat.training.utils import exit_process


def forward_step(data_iterator, model, args, timers):
    """Next-token cross entropy over a batch of rows ``[b, seq_len + 1]``."""
    timers("batch generator").start()
    rows = next(data_iterator).to(args.device)
    timers("batch generator").stop()
    tokens, targets = rows[:, :-1], rows[:, 1:]
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    logits = model(tokens, positions, -1)[0]  # -1: causal attention
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def create_dataset_function(path: str, args):
    return BinaryDataset(
        path,
        lambda row: torch.from_numpy(row.astype(np.int64)),
        length_per_sample=args.max_sequence_length + 1,
        dtype="uint8",
    )


@torch.no_grad()
def continue_text(model, prompt: str, new_tokens: int = 100) -> str:
    """Sample a continuation of ``prompt`` (bytes in, text out) with the KV cache; the whole
    must fit in ``--max-sequence-length``."""
    model.eval()
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    prompt_ids = torch.tensor(list(prompt.encode("utf-8")))
    seq = torch.cat([prompt_ids, torch.full((new_tokens,), -1)]).to(next(model.parameters()).device)
    tokens = filling_sequence(model, seq, batch_size=1, strategy=BaseStrategy(temperature=0.7, top_k=20))[0][0]
    model.del_mixin("auto-regressive")
    return bytes(tokens.tolist()).decode("utf-8", errors="replace")


def main() -> None:
    args = get_args()
    engine = training_main(args, GPT2Model, forward_step, create_dataset_function)
    if torch.distributed.get_rank() == 0:
        torch.manual_seed(args.seed)
        print(f"sample: {continue_text(engine.module, 'The checkpoint')!r}", flush=True)
    exit_process()


if __name__ == "__main__":
    main()
