"""`make demo`: train a tiny character-level language model on text embedded below, save it,
reload it with AutoModel.from_pretrained and let it continue a prompt.

Runs on one CPU in well under a minute; every step says what it does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from sat.model import AutoModel, BaseModel
from sat.training.model_io import save_checkpoint

TEXT = (
    "a transformer reads a sequence of tokens and predicts the next one. "
    "each layer mixes the tokens with attention and transforms them with a small network. "
    "a mixin changes one part of the model without rewriting the rest. "
    "the hooks are where the mixins plug in: attention, the mlp, the embeddings and the output. "
) * 4


def batches(data: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        chunk = torch.stack([data[s : s + seq_len + 1] for s in starts])
        yield chunk[:, :-1], chunk[:, 1:]


def generate(model, vocab: list[str], prompt: str, new_tokens: int) -> str:
    ids = torch.tensor([[vocab.index(c) for c in prompt]])
    with torch.no_grad():
        for _ in range(new_tokens):
            positions = torch.arange(ids.shape[1]).unsqueeze(0)
            logits = model(ids, positions, -1)[0]
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return "".join(vocab[i] for i in ids[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save", default=None, help="checkpoint folder (default: a temporary one)")
    options = parser.parse_args()
    torch.manual_seed(0)

    vocab = sorted(set(TEXT))
    data = torch.tensor([vocab.index(c) for c in TEXT])
    args = BaseModel.get_args(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=len(vocab),
        max_sequence_length=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        is_rotary_emb=True,
    )
    model = BaseModel(args)
    print(
        f"[1/4] built a {sum(p.numel() for p in model.parameters()):,}-parameter BaseModel "
        f"(2 layers, rotary positions) over a {len(vocab)}-character vocabulary"
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = batches(data, 48, 16, torch.Generator().manual_seed(0))
    start = time.time()
    for step in range(1, options.steps + 1):
        inputs, targets = next(stream)
        positions = torch.arange(inputs.shape[1]).expand_as(inputs)
        logits = model(inputs, positions, -1)[0]
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 100 == 0:
            print(f"[2/4] step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.1f}s)")

    save_dir = options.save or tempfile.mkdtemp(prefix="sat-demo-")
    args.save = save_dir
    save_checkpoint(options.steps, model, None, None, args)
    print(f"[3/4] saved to {save_dir}: {sorted(os.listdir(save_dir))}")

    loaded, _ = AutoModel.from_pretrained(save_dir)
    prompt = "a mixin "
    print(f"[4/4] reloaded {type(loaded).__name__} with AutoModel.from_pretrained; greedy continuation:")
    print(f"      {generate(loaded, vocab, prompt, 40)!r}")


if __name__ == "__main__":
    main()
