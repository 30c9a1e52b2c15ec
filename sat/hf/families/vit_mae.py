"""ViT-MAE (``ViTMAEForPreTraining``) <-> sat ``MAE``.

HF's encoder (``vit.``) is sat's ``encoder``: the ``[CLS]`` token its one-row word embedding,
the fixed sine-cosine table its position embedding. HF's ``decoder.`` is sat's ``decoder``: the
``[MASK]`` token its word embedding, ``decoder_pos_embed`` its position embedding,
``decoder_norm`` its final layer norm. Both translate with ``noise`` fed alike: HF's
``model(pixels, noise=noise)`` masks the patches sat's ``model(..., noise=noise)`` does.
``norm_pix_loss`` only changes HF's loss, which sat's model does not compute: it is not carried.
"""

from __future__ import annotations

from dataclasses import dataclass

from sat.hf.families.bert import QKV, weight_bias
from sat.hf.families.vit import BATCH, encoder_args, encoder_config, encoder_rows, prepare_hf_state
from sat.hf.family import Family, register_family
from sat.hf.mapping import StateDictMap, concat

_CLASS = "ViTMAEForPreTraining"


# The decoder's fused [Q; K; V] splits by the decoder's width on the way back.
DEC_QKV = concat(lambda ctx: [ctx["dec_hidden_size"]] * 3, "dec_qkv")


def _prefixed(rows: list[tuple], prefix: str) -> list[tuple]:
    """``rows`` with ``prefix`` before each sat name."""
    return [(prefix + row[0], *row[1:]) for row in rows]


def encoder_table() -> list[tuple]:
    return [
        ("encoder.transformer.word_embeddings.weight", "vit.embeddings.cls_token", BATCH),
        *_prefixed(encoder_rows("vit."), "encoder."),
    ]


def decoder_table() -> list[tuple]:
    # The decoder's layers are named like the encoder's, under decoder.decoder_layers.
    layers = [row[:2] + ((DEC_QKV,) if row[2:] == (QKV,) else row[2:]) for row in encoder_rows("decoder.decoder_")]
    return [
        ("decoder.transformer.word_embeddings.weight", "decoder.mask_token", BATCH),
        ("decoder.transformer.position_embeddings.weight", "decoder.decoder_pos_embed", BATCH),
        *_prefixed([row for row in layers if "{}" in row[0]], "decoder."),
        *weight_bias("decoder.transformer.final_layernorm", "decoder.decoder_norm"),
        *weight_bias("decoder.mixins.mask_forward.decoder_embed", "decoder.decoder_embed"),
        *weight_bias("decoder.mixins.mask_forward.decoder_pred", "decoder.decoder_pred"),
    ]


@dataclass(frozen=True)
class MAEFamily(Family):
    """A family of two stacks of their own depths."""

    def state_map(self, args) -> StateDictMap:
        encoder = StateDictMap.build(encoder_table(), args.num_layers)
        decoder = StateDictMap.build(decoder_table(), args.dec_num_layers or args.num_layers)
        return StateDictMap(encoder.entries + decoder.entries, self.ignore_hf)


def config_to_args(config) -> dict:
    name = (config.architectures or [_CLASS])[0]
    if name != _CLASS:
        raise ValueError(f"{name} is not supported; sat translates {_CLASS}")
    return dict(
        **encoder_args(config, "ViT-MAE"),
        vocab_size=1,
        pre_len=1,
        post_len=0,
        mask_ratio=config.mask_ratio,
        dec_num_layers=config.decoder_num_hidden_layers,
        dec_hidden_size=config.decoder_hidden_size,
        dec_num_attention_heads=config.decoder_num_attention_heads,
        dec_inner_hidden_size=config.decoder_intermediate_size,
    )


def model_to_config(model):
    from transformers import ViTMAEConfig

    values = encoder_config(model.encoder, (1, 0, 1), "one [CLS] token")
    dec = model.decoder.transformer
    return ViTMAEConfig(
        **values,
        architectures=[_CLASS],
        mask_ratio=model.mask_ratio,
        decoder_num_hidden_layers=dec.num_layers,
        decoder_hidden_size=dec.hidden_size,
        decoder_num_attention_heads=dec.num_attention_heads,
        decoder_intermediate_size=dec.inner_hidden_size or 4 * dec.hidden_size,
    )


register_family(
    MAEFamily(
        name="vit_mae",
        model_types=("vit_mae",),
        sat_class="MAE",
        hf_class=_CLASS,
        table=(),
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=lambda args: {
            "hidden_size": args.hidden_size,
            "dec_hidden_size": args.dec_hidden_size or args.hidden_size,
        },
        prepare_hf_state=prepare_hf_state,
    )
)
