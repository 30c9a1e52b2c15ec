"""CaiT (CaiTEncoder, CaiTDecoder): talking heads, LayerScale, class attention.

timm, CaiT's own implementation, cannot be imported here (it needs torchvision, of which only a
CUDA build exists for this CPU torch), and transformers has no CaiT: the reference is the
original SwissArmyTransformer 0.4.12, through checkpoints it wrote and read
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
from sat.model.official import CaiT, ViTModel, cait_model
from sat.model.official.cait_model import AttnMixin

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_cait_eva2_fixtures import CAIT, outputs_of  # noqa: E402


def image() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def classify(model, pixels: torch.Tensor) -> torch.Tensor:
    return model(torch.zeros(pixels.shape[0], 1, dtype=torch.long), None, None, image=pixels)[1]  # [b, classes]


@pytest.mark.parametrize("writer", ["written_by_original", "written_by_ours"])
def test_checkpoints_move_both_ways_with_the_original(writer):
    """The reference is the original 0.4.12 (timm is not importable here). A checkpoint the
    original wrote loads here, one written here loads in the original: the
    encoder outputs and logits equal what the original computed (within 1e-6)."""
    model, args = AutoModel.from_pretrained(os.path.join(FIXTURES, writer, "cait"))
    assert type(model) is CaiT and args.dec_num_layers == 1 and args.init_scale == 0.5
    assert_recorded(outputs_of("cait", model), os.path.join(FIXTURES, writer, "cait", "outputs_by_original.pt"))


def test_original_names_and_shapes():
    model = CaiT(CaiT.get_args(**CAIT))
    assert set(model.encoder.mixins) == {"patch_embedding", "pos_embedding", "attn", "enc_forward", "final"}
    assert set(model.decoder.mixins) == {"cls", "dec_forward"}
    state = model.state_dict()
    assert state["encoder.mixins.attn.proj_l.1.weight"].shape == (2, 2)  # heads x heads
    assert state["encoder.mixins.enc_forward.gamma_2.1"].tolist() == [0.5] * 16  # --init-scale
    assert len(model.decoder.transformer.layers) == 1 and not hasattr(model.encoder.transformer, "final_layernorm")
    assert model.decoder.transformer.word_embeddings is model.encoder.transformer.word_embeddings  # class token
    encoded, logits, *_ = model.eval()(torch.zeros(2, 1, dtype=torch.long), None, None, image=image())
    assert encoded.shape == (2, 4, 16) and logits.shape == (2, 3)


def test_training_reload_and_determinism(tmp_path):
    """Gradients reach every trainable parameter (the decoder's unused self-attention is frozen),
    eval is deterministic and AutoModel reloads the saved model bit for bit."""
    args = CaiT.get_args(**CAIT)
    model = CaiT(args)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert "decoder.transformer.layers.0.attention.query_key_value.weight" in frozen
    assert all(".attention." in n or "post_attention_layernorm" in n or "position_embeddings" in n for n in frozen)
    assert not any(name.startswith("encoder.") for name in frozen)
    pixels = image()
    check_sat_model(model, args, lambda m: classify(m, pixels), tmp_path)


def test_identity_head_mixes_are_standard_attention():
    """``AttnMixin.reinit`` (identity mixes, here with zero biases) gives a plain ViT's attention."""
    args = CaiT.get_args(**CAIT)
    torch.manual_seed(0)
    cait = CaiT(args).eval()
    mixin: AttnMixin = cait.encoder.mixins.attn
    mixin.reinit()
    for linear in [*mixin.proj_l, *mixin.proj_w]:
        torch.nn.init.zeros_(linear.bias)
    cait.encoder.del_mixin("attn")
    plain = cait.encoder
    with torch.no_grad():
        without = plain(torch.zeros(2, 0, dtype=torch.long), None, None, image=image())[0]
        plain.add_mixin("attn", mixin)
        with_mixes = plain(torch.zeros(2, 0, dtype=torch.long), None, None, image=image())[0]
    assert isinstance(plain, ViTModel)
    assert (with_mixes - without).abs().max() < 1e-5


def test_layer_scale_zero_makes_the_layers_identities():
    """With every LayerScale 0, the encoder returns its embeddings and the class token passes
    the decoder unchanged: logits = classifier(final_layernorm(class token))."""
    model = CaiT(CaiT.get_args(**{**CAIT, "init_scale": 0.0})).eval()
    pixels = image()
    with torch.no_grad():
        encoded, logits, *_ = model(torch.zeros(2, 1, dtype=torch.long), None, None, image=pixels)
        patches = model.encoder.mixins.patch_embedding.embed_patches(image=pixels)
        expected_encoded = patches + model.encoder.transformer.position_embeddings.weight
        token = model.decoder.transformer.final_layernorm(model.decoder.transformer.word_embeddings.weight[0])
        expected_logits = model.decoder.mixins.cls.classifier(token).expand(2, -1)
    assert (encoded - expected_encoded).abs().max() < 1e-6
    assert (logits - expected_logits).abs().max() < 1e-6


def test_decoder_without_encoder_outputs_is_an_error():
    model = CaiT(CaiT.get_args(**CAIT))
    with pytest.raises(ValueError, match="encoder_outputs"):
        model.decoder(torch.zeros(2, 1, dtype=torch.long), None, None)


def test_model_parallelism_is_an_error(monkeypatch):
    """Talking heads mix every head, which a model-parallel rank does not hold."""
    monkeypatch.setattr(cait_model, "get_model_parallel_world_size", lambda: 2)
    with pytest.raises(ValueError, match="model parallelism"):
        CaiT(CaiT.get_args(**CAIT))


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(*x.shape[:2], n, -1).transpose(1, 2)  # [b, n, s, hn]


def reference_logits(model: CaiT, pixels: torch.Tensor, n: int = 2) -> torch.Tensor:
    """CaiT written out from the state dict, as timm computes it (timm itself is not importable),
    except that the class-attention MLPs use the tanh-approximated GELU, as the original's
    ``CaiTDecoder`` (a ``BaseModel`` with the default activation) does."""
    p = model.state_dict()
    enc, dec = "encoder.transformer.layers.", "decoder.transformer.layers."

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], p[name + ".weight"], p[name + ".bias"], 1e-6)

    def linear(x, name):
        return F.linear(x, p[name + ".weight"], p[name + ".bias"])

    def mlp(x, layer, approximate="none"):
        hidden = F.gelu(linear(x, layer + "mlp.dense_h_to_4h"), approximate=approximate)
        return linear(hidden, layer + "mlp.dense_4h_to_h")

    proj = "encoder.mixins.patch_embedding.proj"
    x = F.conv2d(pixels, p[proj + ".weight"], p[proj + ".bias"], stride=8).flatten(2).transpose(1, 2)
    x = x + p["encoder.transformer.position_embeddings.weight"]
    for i in range(2):
        layer, mixes = f"{enc}{i}.", "encoder.mixins.attn."
        qkv = linear(ln(x, layer + "input_layernorm"), layer + "attention.query_key_value")
        q, k, v = (heads(t, n) for t in qkv.chunk(3, -1))
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # [b, n, s, s]
        scores = linear(scores.permute(0, 2, 3, 1), f"{mixes}proj_l.{i}").permute(0, 3, 1, 2).softmax(-1)
        probs = linear(scores.permute(0, 2, 3, 1), f"{mixes}proj_w.{i}").permute(0, 3, 1, 2)
        out = linear((probs @ v).transpose(1, 2).flatten(2), layer + "attention.dense")
        x = x + p[f"encoder.mixins.enc_forward.gamma_1.{i}"] * out
        x = x + p[f"encoder.mixins.enc_forward.gamma_2.{i}"] * mlp(ln(x, layer + "post_attention_layernorm"), layer)
    cls = p["decoder.transformer.word_embeddings.weight"][:1].expand(pixels.shape[0], 1, -1)  # [b, 1, h]
    layer = f"{dec}0."
    u = ln(torch.cat([cls, x], 1), layer + "input_layernorm")
    q = heads(linear(u[:, :1], layer + "cross_attention.query"), n)
    k, v = (heads(t, n) for t in linear(u, layer + "cross_attention.key_value").chunk(2, -1))
    out = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).softmax(-1) @ v  # [b, n, 1, hn]
    out = linear(out.transpose(1, 2).flatten(2), layer + "cross_attention.dense")
    cls = cls + p["decoder.mixins.dec_forward.gamma_1.0"] * out
    normed = ln(cls, layer + "post_cross_attention_layernorm")
    cls = cls + p["decoder.mixins.dec_forward.gamma_2.0"] * mlp(normed, layer, approximate="tanh")
    return linear(ln(cls, "decoder.transformer.final_layernorm")[:, 0], "decoder.mixins.cls.classifier")


def test_matches_a_direct_implementation():
    """The logits equal CaiT computed step by step from the same weights (within 1e-5)."""
    model, _ = AutoModel.from_pretrained(os.path.join(FIXTURES, "written_by_original", "cait"))
    pixels = image()
    with torch.no_grad():
        difference = (classify(model.eval(), pixels) - reference_logits(model, pixels)).abs().max()
    assert difference < 1e-5, difference
