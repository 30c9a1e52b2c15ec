"""The language-model loss of a model without its logits: for ``forward_step`` functions.

``chunked_lm_loss(model, labels, input_ids, position_ids, attention_mask)`` runs the model with
its output head deferred (``sat.mpu.deferred_vocab_logits``) and computes the cross entropy
from the head's inputs a chunk of tokens at a time (``sat.mpu.chunked_cross_entropy``), so the
fp32 logits of the whole batch are never held. Works for every model whose head goes through
``sat.mpu.vocab_parallel_logits`` (the zoo's language models: tied embedding, GPT-2/LLaMA/
ChatGLM ``lm_head``, T5), with or without model parallelism.
"""

from __future__ import annotations

import torch

from sat.mpu import HeadInputs, chunked_cross_entropy, deferred_vocab_logits


def chunked_lm_loss(
    model: torch.nn.Module,
    labels: torch.Tensor,
    *inputs,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    **kw_args,
) -> tuple[torch.Tensor, list]:
    """``(loss, outputs_per_layer)`` of ``model(*inputs, **kw_args)`` against ``labels``.

    ``labels [b, s]`` are aligned with the model's output positions (already shifted for
    next-token prediction), ``ignore_index`` where no loss is wanted; the loss is the mean over
    the other tokens, equal to ``F.cross_entropy`` of the logits the model would have returned.
    ``outputs_per_layer`` is the rest of the model's output (one dict per layer).
    """
    with deferred_vocab_logits():
        head, *outputs_per_layer = model(*inputs, **kw_args)
    if not isinstance(head, HeadInputs):
        raise TypeError(
            f"chunked_lm_loss: {type(model).__name__}'s final_forward returned {type(head).__name__}, not the "
            "inputs of sat.mpu.vocab_parallel_logits; its head computes logits another way. Take the hidden "
            "states before the head and call sat.mpu.chunked_cross_entropy(hidden, head_weight, labels) yourself."
        )
    loss = chunked_cross_entropy(
        head.hidden, head.weight, labels, bias=head.bias, chunk_size=chunk_size, ignore_index=ignore_index
    )
    return loss, outputs_per_layer
