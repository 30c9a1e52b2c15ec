"""EVA2Model: masked patch embedding, 2-D vision rotary, SwiGLU with sub-LN, feature head.

timm, EVA-02's own implementation, cannot be imported here (it needs torchvision, of which only
a CUDA build exists for this CPU torch): the reference is the original SwissArmyTransformer
0.4.12, through checkpoints it wrote and read
(tests/fixtures/original_zoo/make_cait_eva2_fixtures.py).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from model_checks import assert_recorded, check_sat_model

from sat.model import AutoModel
from sat.model.official import EVA2Model, eva2_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_cait_eva2_fixtures import EVA2, outputs_of  # noqa: E402

IDS = torch.zeros(2, 1, dtype=torch.long)  # [CLS]


def image() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def mask(*masked: int) -> torch.Tensor:
    """``[2, 16]``: the listed patches masked in both rows."""
    result = torch.zeros(2, 16, dtype=torch.bool)
    result[:, list(masked)] = True
    return result


@pytest.mark.parametrize("writer", ["written_by_original", "written_by_ours"])
def test_checkpoints_move_both_ways_with_the_original(writer):
    """The reference is the original 0.4.12 (timm is not importable here). A checkpoint the
    original wrote loads here, one written here loads in the original: the
    predicted features, with and without masking, equal what the original computed (within 1e-6)."""
    model, args = AutoModel.from_pretrained(os.path.join(FIXTURES, writer, "eva2"))
    assert type(model) is EVA2Model and args.predict_feature_dim == 8
    assert_recorded(outputs_of("eva2", model), os.path.join(FIXTURES, writer, "eva2", "outputs_by_original.pt"))


def test_original_names_and_output_shapes():
    model = EVA2Model(EVA2Model.get_args(**EVA2)).eval()
    assert set(model.mixins) == {"patch_embedding", "eva2-final", "eva2-mlp", "eva2-attn"}
    state = model.state_dict()
    assert state["mixins.patch_embedding.mask_token"].shape == (1, 1, 16)
    assert state["mixins.eva2-mlp.w2.1.weight"].shape == (24, 16)  # inner_hidden_size x hidden
    assert state["mixins.eva2-attn.rope.freqs_cos"].shape == (16, 8)  # 4x4 patches, head size
    with torch.no_grad():
        assert model(IDS, None, None, image=image())[0].shape == (2, 16, 8)  # every patch
        assert model(IDS, None, None, image=image(), bool_masked_pos=mask(0, 5, 9))[0].shape == (6, 8)


def test_training_reload_and_determinism(tmp_path):
    args = EVA2Model.get_args(**EVA2)
    model = EVA2Model(args)
    pixels, masked = image(), mask(1, 2, 7)
    check_sat_model(model, args, lambda m: m(IDS, None, None, image=pixels, bool_masked_pos=masked)[0], tmp_path)


def test_fully_masked_image_does_not_matter():
    """With every patch masked, the input is the mask token everywhere: the image is not seen."""
    model = EVA2Model(EVA2Model.get_args(**EVA2)).eval()
    everything = mask(*range(16))
    with torch.no_grad():
        first = model(IDS, None, None, image=image(), bool_masked_pos=everything)[0]
        second = model(IDS, None, None, image=torch.randn(2, 3, 16, 16), bool_masked_pos=everything)[0]
    assert torch.equal(first, second)


def test_swiglu_with_sub_layer_norm():
    """``mlp_forward``: dense_4h_to_h(ffn_ln(silu(dense_h_to_4h(x)) * w2(x)))."""
    model = EVA2Model(EVA2Model.get_args(**EVA2)).eval()
    mlp, mixin = model.transformer.layers[1].mlp, model.mixins["eva2-mlp"]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        hidden = F.silu(mlp.dense_h_to_4h(x)) * mixin.w2[1](x)
        expected = mlp.dense_4h_to_h(F.layer_norm(hidden, (24,), mixin.ffn_ln[1].weight, mixin.ffn_ln[1].bias, 1e-6))
        assert (mixin.mlp_forward(x, layer_id=1) - expected).abs().max() < 1e-6


def test_rotary_leaves_the_class_token_alone():
    """Token 0 ([CLS]) keeps its query and key; the patches are rotated by their grid place."""
    model = EVA2Model(EVA2Model.get_args(**EVA2))
    heads = torch.randn(2, 2, 17, 8)
    rotated = model.mixins["eva2-attn"].rotate(heads)
    assert torch.equal(rotated[:, :, 0], heads[:, :, 0])
    assert torch.allclose(rotated[:, :, 1], heads[:, :, 1])  # patch (0, 0): angle 0
    assert not torch.allclose(rotated[:, :, 2:], heads[:, :, 2:])
    assert torch.allclose(rotated.norm(dim=-1), heads.norm(dim=-1), atol=1e-5)  # rotations


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(dict(pre_len=2), "pre_len=1 and post_len=0"), (dict(image_size=[16, 32]), "square image_size")],
)
def test_unsupported_geometry_is_an_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        EVA2Model(EVA2Model.get_args(**{**EVA2, **overrides}))


def test_model_parallelism_is_an_error(monkeypatch):
    monkeypatch.setattr(eva2_model, "get_model_parallel_world_size", lambda: 2)
    with pytest.raises(ValueError, match="model parallelism"):
        EVA2Model(EVA2Model.get_args(**EVA2))
