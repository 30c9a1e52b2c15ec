"""CLIP (ImageEncoder + TextEncoder) and the clip family of sat.hf."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest
import torch
from distributed import assert_grads_equal, gathered_grads, run_workers
from model_checks import (
    assert_recorded,
    check_hf_round_trip,
    check_sat_model,
    check_unmatched_keys,
    check_written_here_loads_in_original,
)
from transformers import CLIPConfig, CLIPForImageClassification, CLIPModel

import sat
from sat.hf import from_hf, hf_to_sat_state_dict, to_hf
from sat.model import AutoModel, get_model_class
from sat.model.official import CLIP
from sat.model.official.clip_model import (
    ImageEncoder,
    ImageMixin,
    PatchMixin,
    QuickGELUActivation,
    TextEncoder,
    TextMixin,
)
from sat.training.model_io import save_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURE)
from make_clip_fixtures import clip_outputs  # noqa: E402

EOS = 98
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
# Three captions ending (EOS, the highest id) at different places, padded with 0 after it.
IDS = torch.randint(1, 97, (3, 8), generator=torch.Generator().manual_seed(1))
LENGTHS = torch.tensor([8, 6, 4])
PADDING = (torch.arange(8) < LENGTHS[:, None]).long()  # [3, 8], 1 = real token
IDS[torch.arange(3), LENGTHS - 1] = EOS
IDS = IDS * PADDING


def hf_config(eos_token_id: int = EOS, **vision) -> CLIPConfig:
    text = dict(vocab_size=99, hidden_size=24, num_attention_heads=4, num_hidden_layers=3, intermediate_size=48)
    text.update(max_position_embeddings=12, eos_token_id=eos_token_id, bos_token_id=97, pad_token_id=0)
    image = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, image_size=32)
    return CLIPConfig(text_config=text, vision_config={**image, "patch_size": 8, **vision}, projection_dim=16)


def randomized(hf: CLIPModel) -> CLIPModel:
    """HF initialises layer norms to ones and biases to zeros: perturb every weight so that a
    misplaced one shows."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return hf.eval()


def sat_outputs(model: CLIP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image_embeds, text_embeds, logits_per_image)`` of the padded captions and the images."""
    cls_ids = torch.zeros(PIXELS.shape[0], 1, dtype=torch.long)
    mask = PADDING[:, None, None, :].float()  # [b, 1, 1, s]; the text tower adds causality
    image, text, _, per_image = model(cls_ids, None, IDS, None, text_attention_mask=mask, image=PIXELS)
    return image, text, per_image


def hf_outputs(hf: CLIPModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = hf(input_ids=IDS, attention_mask=PADDING, pixel_values=PIXELS)
    return out.image_embeds, out.text_embeds, out.logits_per_image


def flat(outputs) -> torch.Tensor:
    return torch.cat([t.flatten() for t in outputs])


@pytest.mark.parametrize("eos_token_id", [EOS, 2], ids=["eos-id", "legacy-highest-id"])
def test_parity_with_transformers_both_ways(tmp_path, eos_token_id):
    hf = randomized(CLIPModel(hf_config(eos_token_id)))
    check_hf_round_trip(hf, lambda m: flat(sat_outputs(m)), lambda h: flat(hf_outputs(h)), tmp_path)
    model, args = AutoModel.from_pretrained(str(tmp_path / "hf"))  # the directory save_hf wrote
    assert type(model) is CLIP and args.text_eos_token_id == (-1 if eos_token_id == 2 else EOS)
    assert (args.num_layers, args.text_num_layers, args.text_hidden_size) == (2, 3, 24)
    with torch.no_grad():
        for name, got, expected in zip(("image", "text", "logits_per_image"), sat_outputs(model), hf_outputs(hf)):
            assert got.shape == expected.shape
            difference = (got - expected).abs().max().item()
            print(f"clip {name}: max abs difference {difference:.2e}")
            assert difference <= 1e-5, name


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="hidden_act='gelu' is not supported"):
        from_hf(CLIPModel(hf_config(hidden_act="gelu")))
    with pytest.raises(ValueError, match="CLIPForImageClassification is not supported"):
        from_hf(CLIPForImageClassification(hf_config()))
    with pytest.raises(ValueError, match="differ in layer_norm_eps"):
        from_hf(CLIPModel(hf_config(layer_norm_eps=1e-6)))
    with pytest.raises(ValueError, match="text_eos_token_id unset"):
        to_hf(CLIP(tiny_args(text_eos_token_id=None)))
    hf = CLIPModel(hf_config())
    older = {**hf.state_dict(), "text_model.embeddings.position_ids": torch.arange(12)[None]}  # a buffer once saved
    assert hf_to_sat_state_dict(older, hf.config).keys() == hf_to_sat_state_dict(hf.state_dict(), hf.config).keys()
    check_unmatched_keys(hf, "text_model.encoder.layers.0.mlp.extra", "vision_model.encoder.layers.1.mlp.fc1.bias")


def tiny_args(**overrides):
    values = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=1,
        image_size=[32, 32],
        patch_size=8,
        projection_dim=16,
        text_vocab_size=100,  # splits over 2 model-parallel ranks
        text_num_layers=3,
        text_hidden_size=24,
        text_max_sequence_length=12,
        text_eos_token_id=EOS,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return CLIP.get_args(**{**values, **overrides})


def tiny_sat(**overrides) -> tuple[CLIP, object]:
    args = tiny_args(**overrides)
    torch.manual_seed(0)
    return CLIP(args), args


def test_towers_names_and_arguments():
    model, args = tiny_sat()
    assert get_model_class("CLIP") is CLIP and get_model_class("ImageEncoder") is ImageEncoder
    assert isinstance(model.text_encoder, TextEncoder) and isinstance(model.image_encoder, ImageEncoder)
    assert list(model.image_encoder.mixins) == ["pos_embedding", "image_enc", "patch_embedding"]
    assert list(model.text_encoder.mixins) == ["text_enc"]
    assert model.image_encoder.get_mixin("patch_embedding").proj.bias is None
    image, text = model.image_encoder.transformer, model.text_encoder.transformer
    assert (image.num_layers, image.hidden_size, image.max_sequence_length) == (2, 32, 1 + 16)
    assert (text.num_layers, text.hidden_size, text.vocab_size, text.max_sequence_length) == (3, 24, 100, 12)
    assert model.logit_scale.item() == pytest.approx(2.6592)
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(text.layers[0].mlp.activation_func(x), x * torch.sigmoid(1.702 * x))
    assert torch.equal(QuickGELUActivation()(x), text.layers[0].mlp.activation_func(x))
    mixins = model.image_encoder.mixins
    assert isinstance(mixins["image_enc"], ImageMixin) and isinstance(mixins["patch_embedding"], PatchMixin)
    assert isinstance(model.text_encoder.get_mixin("text_enc"), TextMixin)


def test_text_pools_at_the_end_of_text_and_is_causal():
    model, _ = tiny_sat()
    model.eval()
    with torch.no_grad():
        embeds = model.encode_text(IDS, None)[0]
        changed = IDS.clone()
        changed[0, 3] = 5  # before row 0's end of text
        changed[1, 7] = 5  # after row 1's
        again = model.encode_text(changed, None)[0]
        last = tiny_sat(text_eos_token_id=None)[0].eval().encode_text(IDS[1:2, :6], None)[0]
    assert not torch.allclose(embeds[0], again[0])
    assert torch.equal(embeds[1:], again[1:])  # a later token never reaches the pooled one
    assert torch.allclose(last, embeds[1:2], atol=1e-6)  # unset: the last token, which is row 1's EOS


def test_sat_model_trains_saves_and_reloads(tmp_path):
    model, args = tiny_sat()
    check_sat_model(model, args, lambda m: flat(sat_outputs(m)), tmp_path)
    with open(os.path.join(args.save, "model_config.json")) as f:
        config = json.load(f)
    assert config["model_class"] == "CLIP"
    assert (config["text_num_layers"], config["projection_dim"], config["text_eos_token_id"]) == (3, 16, EOS)
    loaded, _ = CLIP.from_pretrained(tiny_args(), args.save)  # the original's argument order
    assert torch.equal(loaded.logit_scale, model.logit_scale)


class FrozenTextCLIP(CLIP):
    """examples/clip's CLIP_wp: a subclass that trains the image tower only."""

    def disable_untrainable_params(self):
        self.text_encoder.requires_grad_(False)
        self.logit_scale.requires_grad_(False)


def test_a_subclass_is_registered_and_reloads_as_itself(tmp_path):
    args = tiny_args()
    model = FrozenTextCLIP(args)
    model.disable_untrainable_params()
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"image_encoder"}
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    assert type(AutoModel.from_pretrained(str(tmp_path))[0]) is FrozenTextCLIP


def test_the_original_inference_script_flow(tmp_path):
    """examples/clip/inference_clip.py: CLIP's and ImageEncoder's arguments in one parser, the
    common ones from sat.get_args, CLIP.from_pretrained(name, args), an extra offline=True."""
    model, saved = tiny_sat()
    saved.save = str(tmp_path)
    save_checkpoint(1, model, None, None, saved)
    parser = argparse.ArgumentParser(add_help=False)
    parser = ImageEncoder.add_model_specific_args(CLIP.add_model_specific_args(parser))
    known, rest = parser.parse_known_args(["--text-num-layers", "3", "--projection-dim", "16"])
    args = argparse.Namespace(**vars(sat.get_args(rest)), **vars(known))
    loaded, args = CLIP.from_pretrained(str(tmp_path), args)
    assert args.text_num_layers == 3 and loaded.text_encoder.transformer.num_layers == 3
    with torch.no_grad():
        image, text, per_text, per_image = loaded.eval()(
            torch.zeros(2, 1, dtype=torch.long),
            torch.arange(17)[None],
            IDS,
            torch.arange(8)[None],
            image=PIXELS,
            offline=True,
        )
    assert per_text.shape == (3, 2) and torch.equal(per_image, per_text.t())
    difference = (flat((image, text, per_image)) - flat(sat_outputs(model.eval()))).abs().max()
    assert difference < 1e-6, difference  # unmasked padding: the causal mask hides it from the end of text


def test_a_checkpoint_of_the_original_loads_with_its_outputs():
    """Written by the original 0.4.12 (make_clip_fixtures.py): it pooled the last token and was
    causal only through the mask it was given, which a full mask reproduces here."""
    folder = os.path.join(FIXTURE, "written_by_original", "clip")
    model, args = AutoModel.from_pretrained(folder)
    assert type(model) is CLIP and args.text_eos_token_id is None
    # The logits are scaled by exp(2.66) = 14.3: 1.5e-7 of rounding in the text tower (it makes
    # the mask causal with another product) becomes 1.9e-6.
    assert_recorded(clip_outputs(model), os.path.join(folder, "logits_by_original.pt"), atol=1e-5)


def test_a_checkpoint_written_here_loads_in_the_original(tmp_path):
    """make_clip_fixtures.py's original-reads-ours step recorded what the original computes."""
    check_written_here_loads_in_original(os.path.join(FIXTURE, "written_by_ours", "clip"), clip_outputs, tmp_path, 1e-5)


def _mp_worker(rank: int, world: int, folder: str) -> dict:
    model, args = AutoModel.from_pretrained(folder, overwrite_args={"model_parallel_size": world})
    outputs = flat(sat_outputs(model))
    outputs.square().mean().backward()
    heads = model.text_encoder.transformer.layers[0].attention.query_key_value.weight.shape[0]
    return {"outputs": outputs.detach(), "grads": gathered_grads(model), "qkv rows": heads}


@pytest.mark.multiprocess
def test_mp2_outputs_and_gradients_equal_mp1(tmp_path):
    model, args = tiny_sat()
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    outputs = flat(sat_outputs(model))
    outputs.square().mean().backward()
    for result in run_workers(_mp_worker, 2, str(tmp_path)):
        assert result["qkv rows"] == 3 * 24 // 2  # each rank holds half of the text tower's heads
        assert (result["outputs"] - outputs).abs().max() < 1e-5
        assert_grads_equal(result["grads"], model)
