"""sat.mpu.chunked_cross_entropy and sat.training.lm_loss.chunked_lm_loss: the plain loss and
gradients without the whole batch's logits, at model-parallel size 1 and 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sat import mpu
from sat.model import GPT2Model
from sat.training.lm_loss import chunked_lm_loss
from tests.conftest import TINY
from tests.distributed import run_workers

TOKENS, HIDDEN, VOCAB = 13, 16, 40  # 13 tokens: the last chunk of 4 is partial


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=generator)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator) / HIDDEN**0.5
    bias = torch.randn(VOCAB, generator=generator)
    labels = torch.randint(0, VOCAB, (TOKENS,), generator=generator)
    labels[[2, 7]] = -100
    return hidden, weight, bias, labels


def _grads(loss_fn, hidden, weight, bias, labels):
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss = loss_fn(*leaves, labels)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def _plain(hidden, weight, bias, labels):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, ignore_index=-100)


def _assert_close(actual, expected) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [4, 100])
def test_loss_and_gradients_equal_the_plain_loss(chunk_size):
    inputs = _inputs()
    loss, grads = _grads(lambda h, w, b, y: mpu.chunked_cross_entropy(h, w, y, bias=b, chunk_size=chunk_size), *inputs)
    plain_loss, plain_grads = _grads(_plain, *inputs)
    _assert_close(loss, plain_loss)
    for grad, plain in zip(grads, plain_grads):
        _assert_close(grad, plain)


def test_reductions_and_bad_input():
    hidden, weight, _, labels = _inputs()
    per_token = mpu.chunked_cross_entropy(hidden[None], weight, labels[None], chunk_size=5, reduction="none")
    plain = F.cross_entropy(hidden @ weight.t(), labels, reduction="none")  # 0 where ignored
    assert per_token.shape == (1, TOKENS) and per_token.dtype == torch.float32
    _assert_close(per_token[0], plain)
    _assert_close(mpu.chunked_cross_entropy(hidden, weight, labels, reduction="sum"), plain.sum())
    with pytest.raises(ValueError, match="reduction must be one of"):
        mpu.chunked_cross_entropy(hidden, weight, labels, reduction="avg")
    with pytest.raises(ValueError, match="labels \\(12,\\) must match hidden"):
        mpu.chunked_cross_entropy(hidden, weight, labels[1:])
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        mpu.chunked_cross_entropy(hidden, weight, labels, chunk_size=0)


def _lm_losses(model, ids, positions, labels):
    """(chunked loss and grads, plain loss and grads) of ``model`` on one batch."""
    loss, _ = chunked_lm_loss(model, labels, ids, positions, -1, chunk_size=6)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids, positions, -1)[0]  # [b, s, vocab]
    plain = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    plain.backward()
    return loss.detach(), grads, plain.detach(), {name: p.grad for name, p in model.named_parameters()}


def _batch():
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    return ids, torch.arange(9).expand(2, 9), labels


def test_chunked_lm_loss_of_a_model_equals_its_logits_loss():
    torch.manual_seed(0)
    model = GPT2Model(GPT2Model.get_args(**TINY))  # untied lm_head
    loss, grads, plain, plain_grads = _lm_losses(model, *_batch())
    _assert_close(loss, plain)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        _assert_close(grads[name], plain_grads[name])


def test_chunked_lm_loss_names_a_head_it_cannot_defer():
    class Classifier(torch.nn.Module):
        def forward(self, ids):
            return [ids.float(), {}]

    with pytest.raises(TypeError, match="Classifier's final_forward returned Tensor"):
        chunked_lm_loss(Classifier(), torch.zeros(2, dtype=torch.long), torch.zeros(2))


def _model_parallel_worker(rank: int, world: int) -> None:
    mpu.initialize_model_parallel(world)
    hidden, weight, bias, labels = _inputs()
    shard = slice(rank * VOCAB // world, (rank + 1) * VOCAB // world)
    weight_shard, bias_shard = weight[shard].contiguous(), bias[shard].contiguous()
    loss, (grad_hidden, grad_weight, grad_bias) = _grads(
        lambda h, w, b, y: mpu.chunked_cross_entropy(h, w, y, bias=b, chunk_size=4),
        hidden, weight_shard, bias_shard, labels,
    )  # fmt: skip
    plain_loss, (plain_hidden, plain_weight, plain_bias) = _grads(_plain, hidden, weight, bias, labels)
    _assert_close(loss, plain_loss)
    _assert_close(grad_hidden, plain_hidden)  # summed over the two vocabulary shards
    _assert_close(grad_weight, plain_weight[shard])
    _assert_close(grad_bias, plain_bias[shard])

    torch.manual_seed(0)
    model = GPT2Model(GPT2Model.get_args(**TINY, model_parallel_size=world))
    assert model.get_mixin("gpt2-final").lm_head.weight.shape[0] == TINY["vocab_size"] // world
    loss, grads, plain, plain_grads = _lm_losses(model, *_batch())
    _assert_close(loss, plain)
    for name in grads:
        _assert_close(grads[name], plain_grads[name])


@pytest.mark.multiprocess
def test_model_parallel_2_equals_the_full_vocabulary_loss():
    run_workers(_model_parallel_worker, 2)
