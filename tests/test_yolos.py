"""YOLOS (ViT detector with detection tokens) and the yolos family of sat.hf."""

from __future__ import annotations

import pytest
import torch
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import YolosConfig, YolosForObjectDetection

from sat.hf import from_hf, to_hf
from sat.model import AutoModel, get_model_class
from sat.model.official import YOLOS
from sat.model.official.vit_model import ViTProperty

TINY = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, patch_size=8)


def image(height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def hf_model(**overrides) -> YolosForObjectDetection:
    """Three detection tokens over a 4x4 patch grid, five classes (and "no object"); the
    tokens and the position table (zeros in HF's initialisation) made random."""
    values = dict(image_size=[32, 32], num_detection_tokens=3, num_labels=5, use_mid_position_embeddings=False)
    hf = YolosForObjectDetection(YolosConfig(**{**TINY, **values, **overrides}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in (hf.vit.embeddings.cls_token, hf.vit.embeddings.detection_tokens):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        table = hf.vit.embeddings.position_embeddings
        table.copy_(torch.randn(table.shape, generator=generator))
    return hf.eval()


def detect(model, pixels) -> dict:
    tokens = torch.arange(1 + model.get_mixin("det_head").num_det_tokens).expand(pixels.shape[0], -1)
    return model(tokens, None, None, image=pixels)[0]


def both(outputs) -> torch.Tensor:
    """Logits and boxes side by side: ``[b, n, num_det_classes + 4]``."""
    logits = outputs["pred_logits"] if "pred_logits" in outputs else outputs.logits  # sat's dict, or HF's
    return torch.cat([logits, outputs["pred_boxes"]], dim=-1)


def test_parity_of_logits_and_boxes_both_ways(tmp_path):
    pixels, hf = image(), hf_model()
    difference = check_hf_round_trip(hf, lambda m: both(detect(m, pixels)), lambda h: both(h(pixels)), tmp_path)
    assert difference <= 1e-5
    model, args = from_hf(hf)
    assert (args.pre_len, args.post_len, args.vocab_size, args.num_det_classes) == (1, 3, 4, 6)
    with torch.no_grad():
        out, expected = detect(model, pixels), hf(pixels)
    assert out["pred_logits"].shape == (2, 3, 6) and out["pred_boxes"].shape == (2, 3, 4)
    assert (out["pred_boxes"] - expected.pred_boxes).abs().max() <= 1e-5
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()


def test_reinit_to_a_new_image_size_equals_hf_interpolating_per_image():
    hf = hf_model()
    model, _ = from_hf(hf)
    pixels = image(48, 64)  # HF interpolates its 4x4 table to 6x8 in every forward
    model.get_mixin("pos_embedding").reinit(model, property=ViTProperty([48, 64], 8, 1, 3))
    with torch.no_grad():
        assert (both(detect(model, pixels)) - both(hf(pixels))).abs().max() <= 1e-5


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = YOLOS.get_args(
        num_layers=2, hidden_size=32, num_attention_heads=4, image_size=[32, 32], patch_size=8,
        num_det_tokens=3, post_len=3, vocab_size=4, num_det_classes=6,
    )  # fmt: skip
    model = YOLOS(args)
    assert get_model_class("YOLOS") is YOLOS
    assert list(model.mixins) == ["pos_embedding", "patch_embedding", "det_head"]
    assert model.transformer.max_sequence_length == 1 + 16 + 3
    check_sat_model(model, args, lambda m: both(detect(m, image())), tmp_path)
    loaded, _ = AutoModel.from_pretrained(args.save)
    assert type(loaded) is YOLOS


def test_new_token_reinit_grows_a_vit_vocabulary_keeping_cls():
    args = YOLOS.get_args(
        num_layers=1, hidden_size=32, num_attention_heads=4, image_size=[32, 32], patch_size=8,
        num_det_tokens=3, post_len=3, vocab_size=1,
    )  # fmt: skip
    model = YOLOS(args)  # as loaded from a ViT checkpoint: one [CLS] row
    cls = model.transformer.word_embeddings.weight[0].detach().clone()
    model.get_mixin("patch_embedding").reinit(model)
    table = model.transformer.word_embeddings.weight
    assert table.shape == (4, 32) and torch.equal(table[0], cls)
    assert detect(model, image())["pred_boxes"].shape == (2, 3, 4)


def test_bad_configurations_raise_naming_the_problem():
    with pytest.raises(ValueError, match=r"post_len \(1\) must equal num_det_tokens \(3\)"):
        YOLOS(YOLOS.get_args(num_layers=1, hidden_size=32, num_attention_heads=4, num_det_tokens=3, post_len=1))
    with pytest.raises(ValueError, match="use_mid_position_embeddings=True is not supported"):
        from_hf(hf_model(use_mid_position_embeddings=True))
    with pytest.raises(ValueError, match="YOLOS with hidden_act='relu' is not supported"):
        from_hf(hf_model(hidden_act="relu"))
    model, _ = from_hf(hf_model())
    model.get_mixin("patch_embedding").new_token_size = 6
    model.get_mixin("patch_embedding").reinit(model)  # two extra rows: no HF counterpart
    with pytest.raises(ValueError, match="detection tokens: pre_len=1, post_len=3, vocab_size=4"):
        to_hf(model)
    check_unmatched_keys(hf_model(), "bbox_predictor.layers.3.weight", "vit.encoder.layer.1.output.dense.bias")
