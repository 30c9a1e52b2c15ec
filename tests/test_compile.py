"""torch.compile of the layer stack: one layer traces as one graph (fullgraph=True) with the
default hooks and with the KV-cache and LoRA mixins, and compiled outputs and gradients equal
eager ones.

Graph breaks happen in the capture (Dynamo): the fullgraph checks use the ``eager`` backend,
and the training step ``aot_eager``, which also traces the backward (AOTAutograd). Inductor's
code generation takes about 40 s per graph on this CPU, too slow for the test suite;
bench/compile.py runs it and measures the speed-up.
"""

from __future__ import annotations

import pytest
import torch

from sat.model import BaseModel
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin, KVCache
from sat.model.compile import compile_layers
from sat.model.finetune.lora2 import LoraMixin
from sat.ops.attention import resolve_attention_mask
from tests.conftest import TINY

BACKEND = "eager"  # Dynamo's capture only


def _model(*mixins: str) -> BaseModel:
    torch.manual_seed(0)
    model = BaseModel(BaseModel.get_args(**TINY))
    if "lora" in mixins:
        model.add_mixin("lora", LoraMixin(TINY["num_layers"], r=4), reinit=True)
        for name, param in model.named_parameters():
            if "matrix_B" in name:  # LoRA's B starts at zero: make the adapters count
                torch.nn.init.normal_(param, std=0.1)
    if "cache" in mixins:
        model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    transformer = model.transformer
    transformer.hooks.clear()
    transformer.hooks.update(model.hooks)  # what BaseModel.forward installs before the layers run
    return model.eval()


def _layer_call(model: BaseModel, length: int, **kw_args):
    """Layer 0 called as the backbone calls it, on ``length`` new positions."""
    mask = resolve_attention_mask(-1, length, torch.float32, torch.device("cpu"))
    layer = model.transformer.layers[0]

    def call(hidden: torch.Tensor, position_ids: torch.Tensor, **extra) -> torch.Tensor:
        return layer(
            hidden, mask, layer_id=0, position_ids=position_ids,
            output_this_layer={}, output_cross_layer={}, **kw_args, **extra,
        )  # fmt: skip

    return call


def test_one_layer_with_the_default_hooks_is_one_graph():
    model = _model()
    hidden = torch.randn(2, 10, TINY["hidden_size"])
    positions = torch.arange(10).expand(2, 10)
    call = _layer_call(model, 10)
    compiled = torch.compile(call, fullgraph=True, backend=BACKEND)  # raises on any graph break
    torch.testing.assert_close(compiled(hidden, positions), call(hidden, positions), rtol=0, atol=1e-5)


def test_a_layer_with_kv_cache_and_lora_mixins_is_one_graph_per_step():
    model = _model("lora", "cache")
    hidden = torch.randn(2, 7, TINY["hidden_size"])
    eager_cache, compiled_cache = KVCache(TINY["num_layers"], 16), KVCache(TINY["num_layers"], 16)
    prefill, step = _layer_call(model, 6), _layer_call(model, 1)
    compiled_prefill = torch.compile(prefill, fullgraph=True, backend=BACKEND)
    compiled_step = torch.compile(step, fullgraph=True, backend=BACKEND)
    positions = torch.arange(7).expand(2, 7)
    expected = [prefill(hidden[:, :6], positions[:, :6], mems=eager_cache)]
    expected.append(step(hidden[:, 6:], positions[:, 6:], mems=eager_cache))
    outputs = [compiled_prefill(hidden[:, :6], positions[:, :6], mems=compiled_cache)]
    outputs.append(compiled_step(hidden[:, 6:], positions[:, 6:], mems=compiled_cache))
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference, rtol=0, atol=1e-5)
    assert compiled_cache.length == eager_cache.length == 7  # the compiled step wrote into the cache
    torch.testing.assert_close(compiled_cache.keys[0][:, :, :7], eager_cache.keys[0][:, :, :7], rtol=0, atol=1e-5)


def test_compiled_training_step_equals_eager():
    ids = torch.randint(0, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(10).expand(2, 10)
    results = []
    for compiled in (False, True):
        model = _model("lora").train()
        if compiled:
            compile_layers(model, backend="aot_eager")
        logits = model(ids, positions, -1)[0]  # [b, s, vocab]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (eager_logits, eager_grads), (compiled_logits, compiled_grads) = results
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=0, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 0
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_compile_flag_and_bad_target():
    from sat import get_args

    assert get_args(["--compile"]).compile and not get_args([]).compile
    with pytest.raises(TypeError, match="compile_layers needs a sat model or a BaseTransformer"):
        compile_layers(torch.nn.Linear(2, 2))
