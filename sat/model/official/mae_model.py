"""MAE (masked autoencoder): a ViT encoder that sees a random subset of the patches, and a
narrower decoder that fills the rest with a learned ``[MASK]`` token and predicts every patch's
pixels.

``MAEEncoder`` is a ``ViTModel`` with fixed 2-D sine-cosine positions (``pos_embedding``, a
``PosMixin``) whose first layer drops the masked patches, as the original did. ``MAEDecoder`` is a
``BaseModel`` whose word embedding is the ``[MASK]`` token (``mask_forward``, a ``MaskMixin``).
``MAE`` joins them as an ``EncoderDecoderModel`` (no cross-attention: the decoder reads the
encoder's output as its input) and, unlike the original's, builds from ``model_config.json``.

Masking is reproducible: pass ``generator=torch.Generator().manual_seed(s)``, or the ``noise``
itself (``[b, num_patches]``, HF's ``noise``: the patches of the smallest noise are kept).
"""

from __future__ import annotations

import argparse

import torch

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.encoder_decoder_model import EncoderDecoderModel, EncoderFinalMixin, decoder_args
from sat.model.official.vit_model import InterpolatedPositionEmbeddingMixin, ViTModel, ViTProperty
from sat.model.position_embedding import get_2d_sincos_pos_embed


def sincos_table(hidden_size: int, property: ViTProperty) -> torch.Tensor:
    """The fixed ``[seq_len, hidden_size]`` table: zero rows for the special tokens."""
    table = get_2d_sincos_pos_embed(hidden_size, property.grid_size, property.pre_len, property.post_len)
    return torch.from_numpy(table).float()


def fixed_position_table(transformer, table: torch.Tensor) -> None:
    """Give ``transformer`` the frozen position table ``table`` (``[s, h]``)."""
    weight = transformer.position_embeddings.weight
    embedding = torch.nn.Embedding(*table.shape, dtype=weight.dtype, device=weight.device)
    embedding.weight.data.copy_(table)
    embedding.weight.requires_grad_(False)  # fixed, as in the original and HF
    transformer.position_embeddings = embedding


def masking_noise(
    batch: int, length: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Uniform ``[batch, length]`` noise from ``generator`` (on its device), else the global RNG."""
    if generator is not None:
        device = generator.device
    return torch.rand(batch, length, generator=generator, device=device)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``int(L * (1 - mask_ratio))`` of each sample's ``L`` tokens, those of the smallest
    ``noise`` (``masking_noise`` from ``generator`` when not given). Returns the kept tokens
    ``[b, keep, d]``, the mask ``[b, L]`` (1 = removed) and ``ids_restore`` ``[b, L]``, which
    puts a (kept + mask tokens) sequence back in the original order."""
    batch, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = masking_noise(batch, length, generator, x.device)
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # [b, L], ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [b, L]
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # [b, keep, d]
    mask = torch.ones(batch, length, dtype=x.dtype, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


class PosMixin(InterpolatedPositionEmbeddingMixin):
    """The encoder's fixed sine-cosine positions, and the masking after them: with a
    ``mask_ratio`` keyword the first layer keeps the ``[CLS]`` token and a random subset of the
    patches, and records ``mask`` and ``ids_restore`` in its layer outputs."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size

    @torch.no_grad()
    def reinit(self, parent_model=None, property: ViTProperty | None = None) -> None:
        """The sine-cosine table of ``property``'s grid (by default the current one)."""
        property = property or self.transformer.property
        fixed_position_table(self.transformer, sincos_table(self.hidden_size, property))
        self.transformer.property = property
        self.transformer.max_sequence_length = property.seq_len

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        if kw_args.get("mask_ratio") is not None:
            # Drawn here, outside any activation-checkpointed chunk, so a recomputation
            # masks the same patches.
            noise = kw_args.get("noise")
            if noise is None:
                batch, patches = kw_args["image"].shape[0], self.transformer.property.num_patches
                device = self.transformer.position_embeddings.weight.device
                noise = masking_noise(batch, patches, kw_args.get("generator"), device)
            output_cross_layer["mae_noise"] = noise  # [b, num_patches], for layer 0
        return super().position_embedding_forward(position_ids, output_cross_layer, **kw_args)

    def layer_forward(self, hidden_states, mask, *args, **kw_args):
        noise = kw_args.pop("mae_noise", None)
        if kw_args["layer_id"] == 0 and noise is not None:
            pre = self.transformer.property.pre_len
            kept, patch_mask, ids_restore = random_masking(hidden_states[:, pre:], kw_args["mask_ratio"], noise)
            hidden_states = torch.cat([hidden_states[:, :pre], kept], dim=1)  # [b, pre + keep, h]
            kw_args["output_this_layer"].update(mask=patch_mask, ids_restore=ids_restore)
        return self.transformer.layers[kw_args["layer_id"]].default_forward(hidden_states, mask, *args, **kw_args)


class MAEEncoder(ViTModel):
    """A headless ViT with fixed positions that masks patches (see ``PosMixin``)."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.del_mixin("cls")
        self.del_mixin("pos_embedding")
        self.add_mixin("pos_embedding", PosMixin(self.transformer.hidden_size), reinit=True)
        self.add_mixin("final", EncoderFinalMixin())  # the hidden states, not logits

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("MAE-enc", "MAE encoder Configurations")
        group.add_argument("--mask-ratio", type=float, default=0.75, help="share of the patches masked")
        return super().add_model_specific_args(parser)


class MaskMixin(BaseMixin):
    """The decoder's input and head: ``decoder_embed`` maps the encoder's output to the
    decoder's width, ``[MASK]`` tokens (the word embedding) fill the removed patches and
    ``ids_restore`` puts them in place; ``decoder_pred`` predicts each patch's pixels."""

    def __init__(self, args):
        super().__init__()
        self.decoder_embed = torch.nn.Linear(args.enc_hidden_size, args.hidden_size)
        self.decoder_pred = torch.nn.Linear(args.hidden_size, args.patch_size**2 * args.in_channels)

    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        x = self.decoder_embed(kw_args["encoder_outputs"])  # [b, 1 + keep, h]
        ids_restore = kw_args["ids_restore"]  # [b, L]
        missing = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.transformer.word_embeddings(input_ids[:, :1]).expand(-1, missing, -1)  # [b, L - keep, h]
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # [b, L, h], shuffled
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffled
        return torch.cat([x[:, :1], patches], dim=1)  # [b, 1 + L, h]

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return self.transformer.position_embeddings.weight.unsqueeze(0)  # [1, 1 + L, h]

    def final_forward(self, logits, **kw_args):
        return self.decoder_pred(logits)[:, 1:]  # [b, L, patch_size**2 * in_channels], no [CLS]


class MAEDecoder(BaseModel):
    """A ``BaseModel`` on ``[CLS]`` plus every patch (kept ones from the encoder, ``[MASK]``
    for the rest), with fixed sine-cosine positions. ``args.enc_hidden_size``: the encoder's width."""

    def __init__(self, args, transformer=None, **kwargs):
        property = ViTProperty(args.image_size, args.patch_size, 1, 0)
        kwargs["max_sequence_length"] = property.seq_len
        super().__init__(args, transformer=transformer, **kwargs)
        fixed_position_table(self.transformer, sincos_table(self.transformer.hidden_size, property))
        self.add_mixin("mask_forward", MaskMixin(args))


class MAE(EncoderDecoderModel):
    """``MAEEncoder`` + ``MAEDecoder`` (``--dec-*`` arguments size the decoder), untied.

    ``forward(input_ids, enc_position_ids, dec_position_ids, image=..., mask_ratio=...)`` returns
    ``(encoder_outputs, decoder_outputs, encoder_mems, decoder_mems)`` as the original did:
    ``decoder_outputs`` are the pixel predictions ``[b, L, p*p*c]``, ``encoder_mems[0]`` holds
    ``mask`` and ``ids_restore``. ``input_ids`` is ``[b, 1]`` zeros: the ``[CLS]`` token of the
    encoder and the ``[MASK]`` token of the decoder. ``mask_ratio`` defaults to ``--mask-ratio``.
    """

    def __init__(self, args, transformer=None, **kwargs):
        encoder = MAEEncoder(args, transformer=transformer, **kwargs)
        dec_args = decoder_args(args)
        dec_args.cross_attn_hidden_size = None  # no cross-attention
        dec_args.enc_hidden_size = args.hidden_size
        decoder = MAEDecoder(dec_args, transformer=transformer, **kwargs)
        super().__init__(args, encoder=encoder, decoder=decoder, tie_word_embeddings=False)
        self.mask_ratio = args.mask_ratio

    def encode(self, input_ids, position_ids, attention_mask=None, **kw_args):
        """The encoder: ``[hidden_states, *output_per_layers]`` (layer 0's has the mask)."""
        return self.encoder(input_ids, position_ids, attention_mask, **kw_args)

    def decode(self, input_ids, position_ids, attention_mask, encoder_outputs, ids_restore, **kw_args):
        """The decoder: ``[pixel_predictions, *output_per_layers]``; full attention by default."""
        return self.decoder(
            input_ids, position_ids, attention_mask, encoder_outputs=encoder_outputs, ids_restore=ids_restore, **kw_args
        )

    def forward(
        self,
        input_ids,
        enc_position_ids=None,
        dec_position_ids=None,
        *,
        enc_attention_mask=None,
        dec_attention_mask=None,
        **kw_args,
    ):
        kw_args.setdefault("mask_ratio", self.mask_ratio)
        encoder_outputs, *encoder_mems = self.encode(input_ids, enc_position_ids, enc_attention_mask, **kw_args)
        kw_args.pop("mask_ratio")
        decoder_outputs, *decoder_mems = self.decode(
            input_ids,
            dec_position_ids,
            dec_attention_mask,
            encoder_outputs=encoder_outputs,
            ids_restore=encoder_mems[0]["ids_restore"],
            **kw_args,
        )
        return encoder_outputs, decoder_outputs, encoder_mems, decoder_mems

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[b, c, H, W]`` -> ``[b, L, p*p*c]``, each patch row-major with channels last (HF's layout)."""
        return patchify(imgs, self.encoder.transformer.property.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, L, p*p*c]`` -> ``[b, c, H, W]``: the inverse of ``patchify`` at the model's image size."""
        return unpatchify(x, self.encoder.transformer.property)

    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        MAEEncoder.add_model_specific_args(parser)
        return super().add_model_specific_args(parser)

    @classmethod
    def get_args(cls, **kwargs):
        args = super().get_args(**kwargs)
        args.max_sequence_length = ViTProperty.from_args(args).seq_len
        return args


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[b, c, H, W]`` -> ``[b, (H/p)*(W/p), p*p*c]``."""
    b, c, height, width = imgs.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    gh, gw = height // patch_size, width // patch_size
    x = imgs.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)  # [b, L, p*p*c]


def unpatchify(x: torch.Tensor, property: ViTProperty) -> torch.Tensor:
    """``[b, L, p*p*c]`` -> ``[b, c, H, W]`` for ``property``'s grid."""
    (gh, gw), p = property.grid_size, property.patch_size
    if x.shape[1] != gh * gw:
        raise ValueError(f"{x.shape[1]} patches do not fill the {gh}x{gw} grid")
    c = x.shape[2] // (p * p)
    x = x.reshape(x.shape[0], gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [b, c, gh, p, gw, p]
    return x.reshape(x.shape[0], c, gh * p, gw * p)
