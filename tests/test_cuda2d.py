"""Cuda2dModel (CogView2): the pure-PyTorch 2-D local attention against an explicit loop, and the model."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from model_checks import assert_recorded, check_sat_model

from sat.model import AutoModel
from sat.model.official import Cuda2dModel
from sat.model.official.cuda2d_model import sparse_attention_2d_light
from sat.ops.local_attention import OUT_OF_GRID_SCORE, local_similarity, local_weighting

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_cuda2d_fixtures import CUDA2D, inputs, outputs_of  # noqa: E402


def _window(kernel_h: int, kernel_w: int, causal: bool) -> list[tuple[int, int]]:
    """Window offsets (dy, dx) in raster order; causal keeps those up to the centre."""
    offsets = [(ky - kernel_h // 2, kx - kernel_w // 2) for ky in range(kernel_h) for kx in range(kernel_w)]
    return offsets[: kernel_h * kernel_w // 2 + 1] if causal else offsets


def _loop_attention(q, k, v, kernel_h, kernel_w, causal):
    """Scores and outputs query by query, offset by offset, channel by channel."""
    b, c, fine_h, fine_w = q.shape
    h, w = k.shape[2:]
    offsets = _window(kernel_h, kernel_w, causal)
    probs = torch.softmax(torch.randn(b, fine_h, fine_w, len(offsets), dtype=q.dtype), dim=-1)
    scores = torch.empty(b, fine_h, fine_w, len(offsets), dtype=q.dtype)
    out = torch.zeros(b, c, fine_h, fine_w, dtype=q.dtype)
    for n in range(b):
        for i in range(fine_h):
            for j in range(fine_w):
                ci, cj = i // (fine_h // h), j // (fine_w // w)
                for t, (dy, dx) in enumerate(offsets):
                    y, x = ci + dy, cj + dx
                    if not (0 <= y < h and 0 <= x < w):
                        scores[n, i, j, t] = OUT_OF_GRID_SCORE
                        continue
                    scores[n, i, j, t] = sum(q[n, ch, i, j] * k[n, ch, y, x] for ch in range(c))
                    for ch in range(c):
                        out[n, ch, i, j] += probs[n, i, j, t] * v[n, ch, y, x]
    return scores, probs, out


@pytest.mark.parametrize(
    ("fine", "coarse", "kernel_h", "kernel_w", "causal"),
    [
        ((5, 5), (5, 5), 5, 3, True),  # causal, as CogView2's (2k-1) x k window
        ((4, 6), (4, 6), 3, 3, False),
        ((6, 4), (3, 2), 3, 3, False),  # queries on a finer grid than the keys
        ((4, 4), (4, 4), 2, 4, False),  # even sizes: offsets -1..0 and -2..1
    ],
)
def test_local_attention_matches_loop(fine, coarse, kernel_h, kernel_w, causal):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, *fine, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 3, *coarse, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, *coarse, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    scores_ref, probs, out_ref = _loop_attention(q, k, v, kernel_h, kernel_w, causal)
    scores = local_similarity(q, k, kernel_h, kernel_w, causal)
    out = local_weighting(v, probs, kernel_h, kernel_w, causal)
    assert scores.shape == scores_ref.shape
    assert (scores - scores_ref).abs().max() <= 1e-6
    assert (out - out_ref).abs().max() <= 1e-6


def test_local_attention_causal_sees_only_the_past():
    q = torch.randn(1, 2, 4, 4, requires_grad=True)
    k = torch.randn(1, 2, 4, 4, requires_grad=True)
    scores = local_similarity(q, k, 5, 3, causal=True)  # [1, 4, 4, 8]
    assert scores.shape == (1, 4, 4, 8)
    scores[0, 1, 1].sum().backward()
    # Query (1, 1) reads keys of rows 0..1, columns 0..2, and on row 1 only columns 0..1.
    touched = (k.grad[0].abs().sum(0) > 0).int().tolist()
    assert touched == [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_local_attention_bad_sizes():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="odd kernel sizes"):
        local_similarity(x, x, 4, 3, causal=True)
    with pytest.raises(ValueError, match="not a multiple"):
        local_similarity(torch.zeros(1, 1, 5, 4), x, 3, 3)


TINY = {**CUDA2D, "layout": "2,6,22"}  # 2 text tokens, a 2x2 image, then a 4x4 image

# The state-dict keys and shapes the original 0.4.12's Cuda2dModel has for TINY (read from it).
ORIGINAL_MIXIN_KEYS = {
    "mixins.extra_position_embedding.position_embeddings.weight": (16, 32),
    **{f"mixins.attention_plus.query_key_value.{i}.weight": (96, 32) for i in range(2)},
    **{f"mixins.attention_plus.query_key_value.{i}.bias": (96,) for i in range(2)},
    **{f"mixins.attention_plus.dense.{i}.weight": (32, 32) for i in range(2)},
    **{f"mixins.attention_plus.dense.{i}.bias": (32,) for i in range(2)},
}


def _logits(model) -> torch.Tensor:
    return model(*inputs())[0]  # [b, s, vocab]


def test_original_parameter_names():
    model = Cuda2dModel(Cuda2dModel.get_args(**TINY))
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: v for k, v in state.items() if k.startswith("mixins.")} == ORIGINAL_MIXIN_KEYS
    assert state["transformer.position_embeddings.weight"] == (8, 32)
    assert state["transformer.layers.1.attention.query_key_value.weight"] == (96, 32)
    assert model.layout == (2, 6, 22)


def test_train_eval_reload(tmp_path):
    args = Cuda2dModel.get_args(**TINY)
    torch.manual_seed(0)
    model = Cuda2dModel(args)
    assert _logits(model.eval()).shape == (2, 22, 100)
    check_sat_model(model, args, _logits, tmp_path)


def test_high_resolution_tokens_are_causal_and_local():
    """A change to high-resolution token 9 (row 2, col 1 of the 4x4 image) leaves the logits of
    every earlier token unchanged, and those of later tokens outside its windows too."""
    torch.manual_seed(0)
    model = Cuda2dModel(Cuda2dModel.get_args(**{**TINY, "num_layers": 1})).eval()
    ids, position_ids, mask = inputs()
    changed = ids.clone()
    changed[:, 6 + 9] = (ids[:, 6 + 9] + 1) % 100
    with torch.no_grad():
        diff = (model(changed, position_ids, mask)[0] - model(ids, position_ids, mask)[0]).abs().amax(dim=(0, 2))
    moved = [i - 6 for i in range(6, 22) if diff[i] > 0]
    # One layer, causal 5x3 window: (2, 1) is seen by (2, 1), (2, 2) and the row below, columns 0..2.
    assert moved == [9, 10, 12, 13, 14]
    assert (diff[:6] == 0).all()


def test_bad_layout():
    with pytest.raises(ValueError, match="not square"):
        Cuda2dModel(Cuda2dModel.get_args(**{**TINY, "layout": "2,7,22"}))
    with pytest.raises(ValueError, match="new-sequence-length"):
        Cuda2dModel(Cuda2dModel.get_args(**{**TINY, "new_sequence_length": 8}))


def test_sparse_attention_equals_dense_masked_attention():
    """``sparse_attention_2d_light`` is dense attention with the window masks written out: the
    text and low-resolution image causally, each high-resolution query its 3x3 window of the
    2x2 image (around its cell) and its causal 5x3 window of the 4x4 image, in one softmax."""
    gen = torch.Generator().manual_seed(0)
    b, n, hn, text_len, l0, l1 = 2, 2, 3, 1, 2, 4
    s0, s1 = text_len + l0 * l0, l1 * l1
    q0, k0, v0 = (torch.randn(b, s0, n * hn, generator=gen, dtype=torch.float64) for _ in range(3))
    q1, k1, v1 = (torch.randn(b, s1, n * hn, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(s0, s0, dtype=torch.float64).tril()
    context0, context1 = sparse_attention_2d_light(q0, k0, v0, q1, k1, v1, mask, n, text_len, 3, 3)

    def dense(q, k, v, allowed):  # [b, sq, n*hn] x [b, sk, n*hn], allowed [sq, sk]
        q, k, v = (x.view(b, x.shape[1], n, hn).transpose(1, 2) for x in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / hn**0.5).masked_fill(~allowed, float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, n * hn)

    allowed = torch.zeros(s1, l0 * l0 + s1, dtype=torch.bool)
    for i in range(s1):
        r, c = divmod(i, l1)
        r0, c0 = r * l0 // l1, c * l0 // l1  # the low-resolution cell under the query
        for j in range(l0 * l0):
            allowed[i, j] = abs(j // l0 - r0) <= 1 and abs(j % l0 - c0) <= 1
        for j in range(s1):
            dr, dc = j // l1 - r, j % l1 - c
            allowed[i, l0 * l0 + j] = -2 <= dr <= 0 and abs(dc) <= 1 and (dr < 0 or dc <= 0)
    keys, values = torch.cat((k0[:, text_len:], k1), 1), torch.cat((v0[:, text_len:], v1), 1)
    assert (context0 - dense(q0, k0, v0, mask.bool())).abs().max() <= 1e-6
    assert (context1 - dense(q1, keys, values, allowed)).abs().max() <= 1e-6


def test_reinit_copies_the_backbone():
    """``reinit`` starts the mixins from the backbone: attention weights copied layer by layer,
    the extra position table tiled with the backbone's last rows."""
    model = Cuda2dModel(Cuda2dModel.get_args(**TINY))
    model.reinit()
    plus, layers = model.get_mixin("attention_plus"), model.transformer.layers
    for i in range(2):
        assert torch.equal(plus.query_key_value[i].weight, layers[i].attention.query_key_value.weight)
        assert torch.equal(plus.dense[i].bias, layers[i].attention.dense.bias)
    extra = model.get_mixin("extra_position_embedding").position_embeddings.weight  # [16, 32]
    assert torch.equal(extra, model.transformer.position_embeddings.weight.repeat(2, 1))


@pytest.mark.parametrize("writer", ["written_by_original", "written_by_ours"])
def test_checkpoints_move_both_ways_with_the_original(writer):
    """A checkpoint the original 0.4.12 wrote loads here, and one written here loads in the
    original: the logits equal those the original computed (its local attention on a loop
    stand-in for its CUDA extension, tests/fixtures/original_zoo/make_cuda2d_fixtures.py)."""
    folder = os.path.join(FIXTURES, writer, "cuda2d")
    model, args = AutoModel.from_pretrained(folder)
    assert type(model) is Cuda2dModel and model.layout == (2, 6, 22)
    assert_recorded(outputs_of(model), os.path.join(folder, "outputs_by_original.pt"))
