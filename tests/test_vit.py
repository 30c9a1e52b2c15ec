"""ViTModel, its position-grid interpolation, and the vit family of sat.hf."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import ViTConfig, ViTForImageClassification
from transformers import ViTModel as HFViTModel

from sat.hf import from_hf, to_hf
from sat.model import AutoModel
from sat.model.official import ViTModel
from sat.model.official.vit_model import ViTProperty
from sat.training.model_io import save_checkpoint


def image(height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def hf_config(**overrides) -> ViTConfig:
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return ViTConfig(**{**values, **overrides})


def sat_args(**overrides):
    values = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=2,
        image_size=[32, 32],
        patch_size=8,
        pre_len=1,
        post_len=1,
        num_classes=5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return ViTModel.get_args(**{**values, **overrides})


def classify(model, pixels):
    special = torch.arange(model.transformer.property.pre_len + model.transformer.property.post_len)
    return model(special.expand(pixels.shape[0], -1), None, None, image=pixels)[0]


@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_parity_with_transformers(tmp_path, size):
    pixels = image(*size)
    hf = ViTForImageClassification(hf_config(image_size=list(size)))
    difference = check_hf_round_trip(hf, lambda m: classify(m, pixels), lambda h: h(pixels).logits, tmp_path)
    print(f"vit {size} logits: max abs difference {difference:.2e}")


def test_saved_directory_with_former_names_loads(tmp_path):
    hf = ViTForImageClassification(hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")  # written with the names before transformers 5
    model, args = AutoModel.from_pretrained(str(tmp_path / "hf"))
    assert isinstance(model, ViTModel) and args.num_classes == 5 and model.transformer.max_sequence_length == 17
    with torch.no_grad():
        assert (classify(model, image()) - hf(image()).logits).abs().max() < 1e-5


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = sat_args()
    model = ViTModel(args)
    assert list(model.mixins) == ["patch_embedding", "pos_embedding", "cls"]
    assert model.transformer.position_embeddings.weight.shape == (1 + 16 + 1, 32)
    assert args.max_sequence_length == 1 + 16 + 1  # from get_args, and set again by building
    check_sat_model(model, args, lambda m: classify(m, image()), tmp_path)


def test_reinit_to_the_same_grid_changes_nothing():
    model = ViTModel(sat_args())
    before = model.transformer.position_embeddings.weight.detach().clone()
    model.get_mixin("pos_embedding").reinit(model, property=ViTProperty([32, 32], 8, 1, 1))
    assert torch.allclose(model.transformer.position_embeddings.weight, before, atol=1e-6, rtol=0)


def test_reinit_interpolates_the_grid_bicubically_and_keeps_special_tokens():
    model = ViTModel(sat_args())
    old = model.transformer.position_embeddings.weight.detach().clone()  # [1 + 4*4 + 1, h]
    model.get_mixin("pos_embedding").reinit(model, property=ViTProperty([48, 64], 8, 1, 1))

    grid = old[1:17].T.reshape(1, 32, 4, 4)  # [1, h, gh, gw]
    expected = F.interpolate(grid, size=(6, 8), mode="bicubic", align_corners=False).reshape(32, 48).T
    new = model.transformer.position_embeddings.weight
    assert new.shape == (1 + 48 + 1, 32) and model.transformer.max_sequence_length == 50
    assert torch.equal(new[0], old[0]) and torch.equal(new[-1], old[-1])
    assert torch.allclose(new[1:49], expected, atol=1e-6, rtol=0)
    assert classify(model, image(48, 64)).shape == (2, 5)


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        from_hf(ViTForImageClassification(hf_config(hidden_act="relu")))
    with pytest.raises(ValueError, match="one \\[CLS\\] token"):
        to_hf(ViTModel(sat_args()))  # a post token HF's ViT does not have
    check_unmatched_keys(ViTForImageClassification(hf_config()), "vit.layers.0.mlp.extra", "vit.layers.1.mlp.fc1.bias")


def test_args_carry_the_sequence_length_of_the_geometry(tmp_path):
    assert ViTModel.get_args().max_sequence_length == 1 + 14 * 14
    assert sat_args(image_size=[32, 48], post_len=0).max_sequence_length == 1 + 4 * 6
    args = sat_args()
    args.max_sequence_length = 512  # e.g. sat.get_args() defaults
    model = ViTModel(args)
    assert args.max_sequence_length == 18  # the original's constructor wrote it back
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    _, loaded_args = ViTModel.from_pretrained(str(tmp_path))
    assert loaded_args.max_sequence_length == 18


def test_headless_source_gives_hidden_states_and_pooler_and_round_trips(tmp_path):
    hf = HFViTModel(hf_config()).eval()
    model, args = from_hf(hf)
    assert args.headless and list(model.mixins) == ["patch_embedding", "pos_embedding", "pooler"]
    with torch.no_grad():
        expected = hf(image())
        hidden = classify(model, image())  # [b, 1 + 16, h]: no head
        assert hidden.shape == expected.last_hidden_state.shape
        assert (hidden - expected.last_hidden_state).abs().max() < 1e-5
        assert (model.get_mixin("pooler").pool(hidden) - expected.pooler_output).abs().max() < 1e-5
        back = to_hf(model)
        assert type(back) is HFViTModel
        assert (back(image()).last_hidden_state - expected.last_hidden_state).abs().max() < 1e-5
