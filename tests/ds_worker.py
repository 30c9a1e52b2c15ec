"""One ``training_main`` run of a tiny causal language model, for the training tests.

Started by the tests with ``RANK``/``WORLD_SIZE``/``MASTER_PORT`` in the environment (or with
none: a single process) and sat arguments on the command line. It writes what the tests check
to ``$SAT_TEST_OUT/rank<r>.json`` (per-micro-batch training losses, the per-sample losses of
the final strict test evaluation) and ``rank<r>.pt`` (every parameter, gathered under ZeRO-3),
then ends with ``os._exit(0)`` (a gloo teardown race can abort a normal exit).

Failure injection: ``SAT_TEST_KILL_AT=N`` SIGKILLs the process as iteration N+1 starts;
``SAT_TEST_CRASH_SAVE_AT=N`` SIGKILLs it in the middle of writing checkpoint N;
``SAT_TEST_NAN_AT=i,j`` makes the loss of training forward calls i and j (counted from 0) NaN.
``SAT_TEST_MODEL``: ``base`` (default, the BaseModel class), ``frozen`` (a class whose
embeddings are frozen) or ``instance`` (a BaseModel instance with a ``LogitBias`` mixin).
``SAT_TEST_RECORD_INIT=1``: the model as ``init_function`` gets it (after ``--load``) is recorded
too: its parameters in ``init<r>.pt`` and, in the JSON, this rank's parameter bytes (ZeRO-3: its
partitions) and the model's loss on the test sequences.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from sat.model import BaseMixin, BaseModel

SEQ_LEN = 16


class CountingSequences(torch.utils.data.Dataset):
    """Sequences where each token is the previous one plus a per-sample step (mod vocab):
    learnable in a few iterations, so the loss visibly falls."""

    def __init__(self, n: int, vocab: int, offset: int = 0):
        self.n, self.vocab, self.offset = n, vocab, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        i += self.offset
        start, step = (i * 7) % self.vocab, 1 + i % 3
        return (start + step * torch.arange(SEQ_LEN + 1)) % self.vocab


def create_dataset(path: str, args):
    return CountingSequences(10 if path == "test" else 256, args.vocab_size, offset=1000 if path == "test" else 0)


def sample_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each sequence in ``tokens`` [b, SEQ_LEN + 1] -> [b]."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(SEQ_LEN).expand_as(inputs)
    logits = model(inputs, positions, -1)[0].float()  # [b, s, vocab]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [b, s]
    return losses.mean(dim=1)


class LogitBias(BaseMixin):
    """A learned bias on the logits; ``reinit`` sets it to 0.5 so the tests can see it ran."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))

    def reinit(self, parent_model=None):
        torch.nn.init.constant_(self.bias, 0.5)

    @BaseMixin.non_conflict
    def final_forward(self, logits, old_impl=None, **kw_args):
        return old_impl(logits, **kw_args) + self.bias


class FrozenEmbeddings(BaseModel):
    def disable_untrainable_params(self):
        self.transformer.word_embeddings.requires_grad_(False)
        self.transformer.position_embeddings.requires_grad_(False)


def _model(args):
    kind = os.environ.get("SAT_TEST_MODEL", "base")
    if kind == "instance":
        model = BaseModel(args)
        model.add_mixin("logit_bias", LogitBias(args.vocab_size))
        return model
    return {"base": BaseModel, "frozen": FrozenEmbeddings}[kind]


def _record_initial_model(model, args, out: str, rank: int) -> dict:
    """This rank's parameter bytes (its partitions under ZeRO-3, gathered one parameter at a time
    to read them) and the whole model's mean loss on the test sequences."""
    import deepspeed

    params = dict(model.named_parameters())
    held = sum(
        p.ds_tensor.numel() * p.ds_tensor.element_size() if hasattr(p, "ds_tensor") else p.nbytes
        for p in params.values()
    )
    full = sum(p.ds_numel * p.element_size() if hasattr(p, "ds_numel") else p.nbytes for p in params.values())
    values = {}
    for name, param in params.items():
        with deepspeed.zero.GatheredParameters([param]):
            values[name] = param.detach().clone()
    torch.save(values, f"{out}/init{rank}.pt")
    test = create_dataset("test", args)
    with deepspeed.zero.GatheredParameters(list(params.values())), torch.no_grad():
        loss = sample_losses(model.eval(), torch.stack([test[i] for i in range(len(test))])).mean().item()
    model.train()
    return {"param_bytes": held, "full_param_bytes": full, "test_loss": loss}


def _inject_save_crash(iteration: int) -> None:
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        if isinstance(f, str) and f"{os.sep}{iteration}.partial{os.sep}" in f:
            with open(f, "wb") as half_written:
                half_written.write(b"PK\x03\x04 a checkpoint cut short")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = crashing_save


def _whole(param: torch.Tensor) -> torch.Tensor:
    """A parameter whole: gathered from its shards under ``--engine fsdp`` (a collective)."""
    return param.full_tensor() if isinstance(param, DTensor) else param


def main() -> None:
    from sat import get_args
    from sat.training.deepspeed_training import training_main
    from sat.training.utils import exit_process

    out = os.environ["SAT_TEST_OUT"]
    kill_at = int(os.environ.get("SAT_TEST_KILL_AT", "-1"))
    nan_at = {int(i) for i in os.environ.get("SAT_TEST_NAN_AT", "").split(",") if i}
    if "SAT_TEST_CRASH_SAVE_AT" in os.environ:
        _inject_save_crash(int(os.environ["SAT_TEST_CRASH_SAVE_AT"]))
    args = get_args(sys.argv[1:])
    record: dict = {"losses": [], "test_sample_losses": None, "forward_calls": 0}

    def forward_step(data_iterator, model, args, timers):
        if torch.is_grad_enabled() and args.iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        tokens = next(data_iterator)
        losses = sample_losses(model, tokens)
        loss = losses.mean()
        if torch.is_grad_enabled():  # training (DeepSpeedEngine.eval() leaves engine.training set)
            if record["forward_calls"] in nan_at:
                loss = loss * float("nan")
            record["forward_calls"] += 1
            record["losses"].append(loss.item())
            return loss, {"first_token_loss": losses[0].detach()}
        return loss, {"sample_loss_eval": losses}

    def init_function(args, model):
        mixins = getattr(model, "mixins", {})
        record["init"] = {
            "iteration": args.iteration,
            "logit_bias": mixins["logit_bias"].bias.tolist()[:2] if "logit_bias" in mixins else None,
        }
        if os.environ.get("SAT_TEST_RECORD_INIT"):
            record["init"].update(_record_initial_model(model, args, out, torch.distributed.get_rank()))

    def handle_metrics(metrics):
        record["test_sample_losses"] = metrics["sample_loss_eval"].tolist()
        return {"sample_loss": metrics["sample_loss_eval"].mean()}

    engine = training_main(
        args,
        _model(args),
        forward_step,
        create_dataset,
        handle_metrics_function=handle_metrics,
        init_function=init_function,
    )

    import deepspeed

    rank = torch.distributed.get_rank()
    module = engine.module if hasattr(engine, "module") else engine
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        params = {name: _whole(p).detach().float().clone() for name, p in module.named_parameters()}
    torch.save(params, f"{out}/rank{rank}.pt")
    record["experiment_name"] = args.experiment_name
    record["iteration"] = args.iteration
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(record, f)
    exit_process()


if __name__ == "__main__":
    main()
