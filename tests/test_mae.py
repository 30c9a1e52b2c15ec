"""MAE (MAEEncoder, MAEDecoder), its masking and patches, and the vit_mae family of sat.hf."""

from __future__ import annotations

import pytest
import torch
from model_checks import check_hf_round_trip, check_sat_model, check_unmatched_keys
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from sat.hf import from_hf
from sat.model import AutoModel
from sat.model.official import MAE
from sat.model.official.mae_model import MAEDecoder, MAEEncoder, patchify, random_masking, unpatchify
from sat.model.official.vit_model import ViTProperty

PATCHES = 16  # a 32x32 image in 8x8 patches


def image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def fixed_noise(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, PATCHES, generator=torch.Generator().manual_seed(1))


def hf_config(**overrides) -> ViTMAEConfig:
    values = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        decoder_num_hidden_layers=1,
        decoder_hidden_size=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    return ViTMAEConfig(**{**values, **overrides})


def sat_args(**overrides):
    values = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=1,
        image_size=[32, 32],
        patch_size=8,
        dec_num_layers=1,
        dec_hidden_size=16,
        dec_num_attention_heads=2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return MAE.get_args(**{**values, **overrides})


def reconstruct(model, pixels, **kw_args) -> torch.Tensor:
    ids = torch.zeros(pixels.shape[0], 1, dtype=torch.long)  # [CLS] / [MASK]
    return model(ids, None, None, image=pixels, **kw_args)[1]  # [b, L, p*p*c]


def test_parity_with_transformers_with_a_fixed_mask(tmp_path):
    hf = ViTMAEForPreTraining(hf_config())
    pixels, noise = image(), fixed_noise()
    difference = check_hf_round_trip(
        hf, lambda m: reconstruct(m, pixels, noise=noise), lambda h: h(pixels, noise=noise).logits, tmp_path
    )
    print(f"vit_mae logits: max abs difference {difference:.2e}")


def test_mask_and_encoder_output_match_transformers():
    hf = ViTMAEForPreTraining(hf_config(mask_ratio=0.5)).eval()
    model, args = from_hf(hf)
    assert isinstance(model, MAE) and args.mask_ratio == 0.5 and args.dec_num_layers == 1
    pixels, noise = image(), fixed_noise()
    with torch.no_grad():
        expected = hf(pixels, noise=noise, output_hidden_states=True)
        latent = hf.vit(pixels, noise=noise).last_hidden_state  # [b, 1 + 8, h]
        encoded, _, mems, _ = model(torch.zeros(2, 1, dtype=torch.long), None, None, image=pixels, noise=noise)
    assert encoded.shape == latent.shape == (2, 1 + 8, 32)
    assert (encoded - latent).abs().max() <= 1e-5
    assert torch.equal(mems[0]["mask"], expected.mask) and torch.equal(mems[0]["ids_restore"], expected.ids_restore)


def test_fixed_position_tables_are_transformers_sincos():
    def hf_table(width):  # what ViTMAE initialises: its halves in the original MAE's order
        table = build_2d_sinusoidal_position_embedding(4, 4, width, cls_token=True)
        return torch.cat([table[:, width // 2 :], table[:, : width // 2]], dim=1)

    model = MAE(sat_args())
    assert torch.allclose(model.encoder.transformer.position_embeddings.weight, hf_table(32), atol=1e-6)
    assert torch.allclose(model.decoder.transformer.position_embeddings.weight, hf_table(16), atol=1e-6)
    assert not model.encoder.transformer.position_embeddings.weight.requires_grad


def test_masking_is_reproducible_from_a_seed():
    model = MAE(sat_args()).eval()
    ids = torch.zeros(2, 1, dtype=torch.long)

    def masks(seed):
        with torch.no_grad():
            _, out, mems, _ = model(ids, None, None, image=image(), generator=torch.Generator().manual_seed(seed))
        return out, mems[0]["mask"]

    (out_a, mask_a), (out_b, mask_b), (_, mask_c) = masks(3), masks(3), masks(4)
    assert torch.equal(out_a, out_b) and torch.equal(mask_a, mask_b)
    assert not torch.equal(mask_a, mask_c)
    assert mask_a.shape == (2, PATCHES) and mask_a.sum(1).tolist() == [12.0, 12.0]  # 75% of 16 masked


def test_random_masking_keeps_the_patches_of_smallest_noise():
    x = torch.arange(2 * 6, dtype=torch.float).reshape(2, 6, 1)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2], [0.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    kept, mask, ids_restore = random_masking(x, 0.5, noise)
    assert kept[..., 0].tolist() == [[1.0, 5.0, 3.0], [6.0, 11.0, 10.0]]
    assert mask.tolist() == [[1, 0, 1, 0, 1, 0], [0, 1, 1, 1, 0, 0]]
    filled = torch.cat([kept, torch.full((2, 3, 1), -1.0)], dim=1)
    restored = torch.gather(filled, 1, ids_restore.unsqueeze(-1))
    assert torch.equal(restored[..., 0] >= 0, mask == 0)


@pytest.mark.parametrize("size", [(32, 32), (16, 40)])
def test_unpatchify_inverts_patchify(size):
    pixels = torch.randn(2, 3, *size)
    patches = patchify(pixels, 8)
    assert patches.shape == (2, size[0] * size[1] // 64, 8 * 8 * 3)
    assert torch.equal(patches[0, 1], pixels[0, :, :8, 8:16].permute(1, 2, 0).reshape(-1))  # row-major, channels last
    assert torch.equal(unpatchify(patches, ViTProperty(list(size), 8, 1, 0)), pixels)
    model = MAE(sat_args())
    assert torch.equal(model.unpatchify(model.patchify(image())), image())


def test_patchify_matches_transformers():
    hf = ViTMAEForPreTraining(hf_config())
    assert torch.equal(patchify(image(), 8), hf.patchify(image()))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        patchify(torch.zeros(1, 3, 30, 32), 8)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    args = sat_args()
    model = MAE(args)
    assert isinstance(model.encoder, MAEEncoder) and isinstance(model.decoder, MAEDecoder)
    assert list(model.encoder.mixins) == ["patch_embedding", "pos_embedding", "final"]
    noise = fixed_noise()
    check_sat_model(model, args, lambda m: reconstruct(m, image(), noise=noise), tmp_path)
    loaded, loaded_args = AutoModel.from_pretrained(args.save)
    assert loaded_args.dec_hidden_size == 16 and loaded.decoder.transformer.hidden_size == 16


def test_encoder_alone_gives_hidden_states_of_every_patch():
    encoder = MAEEncoder(sat_args()).eval()
    with torch.no_grad():
        hidden = encoder(torch.zeros(2, 1, dtype=torch.long), None, None, image=image())[0]
    assert hidden.shape == (2, 1 + PATCHES, 32)  # no mask_ratio: no masking


def test_unsupported_configs_and_unmatched_keys():
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        from_hf(ViTMAEForPreTraining(hf_config(hidden_act="relu")))
    check_unmatched_keys(ViTMAEForPreTraining(hf_config()), "decoder.extra", "decoder.decoder_layers.0.mlp.fc1.bias")


def test_activation_checkpointing_masks_the_same_patches_in_the_recomputation():
    torch.manual_seed(0)
    plain = MAE(sat_args())
    checkpointed = MAE(sat_args(checkpoint_activations=True, checkpoint_num_layers=1))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.encoder.transformer.checkpoint_activations
    results = []
    for model in (plain, checkpointed):
        pred = reconstruct(model, image(), generator=torch.Generator().manual_seed(5))
        pred.square().mean().backward()
        results.append((pred, model.encoder.transformer.layers[0].mlp.dense_h_to_4h.weight.grad))
    (pred_a, grad_a), (pred_b, grad_b) = results
    assert torch.equal(pred_a, pred_b)
    assert torch.allclose(grad_a, grad_b, atol=1e-7, rtol=0)


def test_saved_transformers_directory_loads_through_automodel(tmp_path):
    hf = ViTMAEForPreTraining(hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")  # transformers' own names, as on the Hub
    model, args = AutoModel.from_pretrained(str(tmp_path / "hf"))
    assert isinstance(model, MAE) and args.dec_hidden_size == 16
    with torch.no_grad():
        expected = hf(image(), noise=fixed_noise()).logits
        assert (reconstruct(model, image(), noise=fixed_noise()) - expected).abs().max() <= 1e-5
