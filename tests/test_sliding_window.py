"""The backbone's sliding-window self-attention (``sliding_window``): masks, kernels, KV cache."""

from __future__ import annotations

import finetune_cases
import pytest
import torch

from sat.config import TransformerConfig
from sat.model.attention import MemoryEfficientAttentionMixin, TransposedMemoryEfficientAttentionMixin
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin, KVCache
from sat.ops.attention import first_key_in_window, sliding_window_mask

SEQ, WINDOW = 12, 5
IDS = torch.randint(0, finetune_cases.VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(SEQ).expand(2, SEQ)
SMALL = dict(num_layers=2, vocab_size=10, hidden_size=8, num_attention_heads=2, max_sequence_length=8)


def tiny(sliding_window) -> torch.nn.Module:
    """The tiny GQA LLaMA of the finetuning tests, with ``sliding_window``."""
    return finetune_cases.tiny("llama-gqa", sliding_window=sliding_window)[0].eval()


def banded(window: int) -> torch.Tensor:
    """The causal ``[SEQ, SEQ]`` mask of a window, written out."""
    i = torch.arange(SEQ)
    return ((i[:, None] >= i) & (i[:, None] - i < window)).float()


def test_window_mask_is_aligned_to_the_last_key():
    assert sliding_window_mask(2, 5, 3, torch.device("cpu")).tolist() == [
        [False, True, True, True, True],  # query at position 3: keys 1..3 (and the future ones)
        [False, False, True, True, True],  # query at position 4: keys 2..4
    ]
    assert first_key_in_window(2, 5, 3) == 1 and first_key_in_window(5, 5, 3) == 0


def test_window_equals_an_explicit_banded_mask_on_both_kernels():
    model = tiny(WINDOW)
    with torch.no_grad():
        sdpa = model(IDS, POSITIONS, -1)[0]  # the backbone's causal mask: SDPA
        eager = model(IDS, POSITIONS, banded(SEQ))[0]  # a tensor mask: the eager path, windowed
        unwindowed = tiny(0)(IDS, POSITIONS, banded(WINDOW))[0]
        full = tiny(0)(IDS, POSITIONS, -1)[0]
    assert (sdpa - eager).abs().max() < 1e-5 and (sdpa - unwindowed).abs().max() < 1e-5
    assert (sdpa - full)[:, WINDOW:].abs().max() > 1e-2  # the window changes later positions
    assert torch.equal(sdpa[:, :WINDOW], full[:, :WINDOW])  # and no earlier one


def test_per_layer_windows():
    model = tiny([0, WINDOW])
    assert [layer.attention.sliding_window for layer in model.transformer.layers] == [0, WINDOW]
    with torch.no_grad():
        windowed = model(IDS, POSITIONS, -1)[0]
        assert not torch.allclose(windowed, tiny(WINDOW)(IDS, POSITIONS, -1)[0], atol=1e-3)
        assert not torch.allclose(windowed, tiny(0)(IDS, POSITIONS, -1)[0], atol=1e-3)


def test_cached_decoding_beyond_the_window_equals_the_full_forward():
    model = tiny(WINDOW)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    cache = KVCache(num_layers=2)
    with torch.no_grad():
        full = model(IDS, POSITIONS, -1)[0]
        steps = [model(IDS[:, :3], POSITIONS[:, :3], -1, mems=cache)[0]]
        steps += [model(IDS[:, i : i + 1], POSITIONS[:, i : i + 1], -1, mems=cache)[0] for i in range(3, SEQ)]
        # A padded-batch style tensor mask over every cached key is windowed the same way.
        tensor_cache = KVCache(num_layers=2)
        padded = [model(IDS[:, :7], POSITIONS[:, :7], banded(SEQ)[:7, :7], mems=tensor_cache)[0]]
        padded += [
            model(IDS[:, i : i + 1], POSITIONS[:, i : i + 1], torch.ones(1, 1, 1, i + 1), mems=tensor_cache)[0]
            for i in range(7, SEQ)
        ]
    assert cache.length == SEQ
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5
    assert (torch.cat(padded, dim=1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("mixin", [MemoryEfficientAttentionMixin, TransposedMemoryEfficientAttentionMixin])
def test_memory_efficient_attention_mixins_honour_the_window(mixin):
    model = tiny(WINDOW)
    with torch.no_grad():
        expected = model(IDS, POSITIONS, -1)[0]
        padded = model(IDS, POSITIONS, banded(SEQ))[0]
        model.add_mixin("mea", mixin())
        assert (model(IDS, POSITIONS, -1)[0] - expected).abs().max() < 1e-5  # the backbone's causal mask
        assert (model(IDS, POSITIONS, banded(SEQ))[0] - padded).abs().max() < 1e-5  # a tensor mask


@pytest.mark.parametrize(
    "window, message",
    [(-1, r"sliding_window must be >= 0"), ([4], r"sliding_window has 1 entries for 2 layers")],
)
def test_bad_windows(window, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**SMALL, sliding_window=window)
