"""DeiTModel (ViT with a distillation token) and the deit family of sat.hf."""

from __future__ import annotations

import pytest
import torch
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import DeiTConfig, DeiTForImageClassification, DeiTForImageClassificationWithTeacher
from transformers import DeiTModel as HFDeiTModel

from sat.hf import from_hf, to_hf
from sat.model import AutoModel, get_model_class
from sat.model.official import DeiTModel, ViTModel


def image() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


TINY = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64)


def hf_config(**overrides) -> DeiTConfig:
    return DeiTConfig(**{**TINY, "image_size": 32, "patch_size": 8, "num_labels": 5, **overrides})  # 4x4 patches


def randomized(hf):
    """HF initialises both tokens and the position table to zeros: make them tell apart."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("cls_token", "distillation_token", "position_embeddings"):
            parameter = getattr(hf.base_model.embeddings, name)
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return hf.eval()


def run(model, pixels, **kw_args):
    tokens = torch.arange(2).expand(pixels.shape[0], -1)  # [CLS], distillation token
    return model(tokens, None, None, image=pixels, **kw_args)[0]


def test_parity_with_the_teacher_model_both_ways(tmp_path):
    pixels = image()
    hf = randomized(DeiTForImageClassificationWithTeacher(hf_config()))
    difference = check_hf_round_trip(hf, lambda m: run(m, pixels), lambda h: h(pixels).logits, tmp_path)
    assert difference <= 1e-5
    model, args = from_hf(hf)
    assert not args.cls_only and list(model.mixins) == ["patch_embedding", "pos_embedding", "cls"]
    with torch.no_grad():
        both, expected = run(model, pixels, separate_heads=True), hf(pixels)
    assert both.shape == (2, 2, 5)
    assert (both[:, 0] - expected.cls_logits).abs().max() <= 1e-5
    assert (both[:, 1] - expected.distillation_logits).abs().max() <= 1e-5


def test_parity_of_the_cls_only_classifier(tmp_path):
    pixels = image()
    hf = randomized(DeiTForImageClassification(hf_config()))
    check_hf_round_trip(hf, lambda m: run(m, pixels), lambda h: h(pixels).logits, tmp_path)
    assert from_hf(hf)[1].cls_only


def test_headless_gives_hidden_states_and_pooler():
    hf = randomized(HFDeiTModel(hf_config()))
    model, args = from_hf(hf)
    assert args.headless and list(model.mixins) == ["patch_embedding", "pos_embedding", "pooler"]
    with torch.no_grad():
        expected, hidden = hf(image()), run(model, image())  # [b, 2 + 16, h]
        assert hidden.shape == (2, 18, 32)
        assert (hidden - expected.last_hidden_state).abs().max() <= 1e-5
        assert (model.get_mixin("pooler").pool(hidden) - expected.pooler_output).abs().max() <= 1e-5
        back = to_hf(model)
        assert type(back) is HFDeiTModel
        assert (back(image()).pooler_output - expected.pooler_output).abs().max() <= 1e-5


def test_saved_directory_with_former_names_loads(tmp_path):
    hf = randomized(DeiTForImageClassificationWithTeacher(hf_config()))
    hf.save_pretrained(tmp_path / "hf")  # deit.encoder.layer.{i}.attention.attention.query...
    model, args = AutoModel.from_pretrained(str(tmp_path / "hf"))
    assert type(model) is DeiTModel and model.transformer.max_sequence_length == 2 + 16
    with torch.no_grad():
        assert (run(model, image()) - hf(image()).logits).abs().max() <= 1e-5


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = DeiTModel.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, image_size=[32, 32], patch_size=8, num_classes=5
    )
    args.vocab_size = 100  # e.g. sat.get_args() defaults: the special tokens decide
    model = DeiTModel(args)
    assert (args.pre_len, args.vocab_size, args.max_sequence_length) == (2, 2, 18)
    assert isinstance(model, ViTModel) and get_model_class("DeiTModel") is DeiTModel
    check_sat_model(model, args, lambda m: run(m, image()), tmp_path)


def test_bad_configurations_raise_naming_the_problem():
    with pytest.raises(ValueError, match="pre_len >= 2"):
        DeiTModel(DeiTModel.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, pre_len=1))
    with pytest.raises(ValueError, match="DeiT with hidden_act='relu' is not supported"):
        from_hf(DeiTForImageClassificationWithTeacher(hf_config(hidden_act="relu")))
    with pytest.raises(ValueError, match="qkv_bias=False"):
        from_hf(DeiTForImageClassificationWithTeacher(hf_config(qkv_bias=False)))
    args = DeiTModel.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, post_len=1)
    with pytest.raises(ValueError, match="distillation token: pre_len=2, post_len=0"):
        to_hf(DeiTModel(args))
    check_unmatched_keys(
        DeiTForImageClassificationWithTeacher(hf_config()), "deit.layers.0.mlp.extra", "distillation_classifier.bias"
    )
