"""``EncoderDecoderModel``: an encoder ``BaseModel`` and a decoder ``BaseModel`` (T5, BART, MAE).

The decoder's layers have cross-attention to the encoder's final hidden states. By default the
two share one word embedding (``tie_word_embeddings``). Parameter names are ``encoder.*`` and
``decoder.*``, as in the original library, so its checkpoints load.
"""

from __future__ import annotations

import argparse

import torch

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.composite import CompositeModel, add_override_args, override_args
from sat.ops.attention import CAUSAL_MASK

# Arguments a ``--dec-<name>`` argument overrides for the decoder (else it copies the encoder).
DECODER_OVERRIDES = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "layernorm_order",
    "max_sequence_length",
    "inner_hidden_size",
    "hidden_size_per_attention_head",
)


class EncoderFinalMixin(BaseMixin):
    """``final_forward`` of the encoder: its output is the final hidden states, not logits."""

    def final_forward(self, logits: torch.Tensor, **kw_args) -> torch.Tensor:
        return logits


def decoder_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every ``dec_<name>`` that is set replacing ``<name>``."""
    dec_args = override_args(args, "dec", DECODER_OVERRIDES)
    if dec_args.hidden_size != args.hidden_size and getattr(args, "cross_attn_hidden_size", None) is None:
        dec_args.cross_attn_hidden_size = args.hidden_size  # keys and values come from the encoder
    return dec_args


class EncoderDecoderModel(CompositeModel):
    """An encoder and a decoder ``BaseModel``; the decoder attends to the encoder's output.

    Args:
        args: the encoder's arguments; ``dec_*`` arguments (``--dec-num-layers``...) override
            them for the decoder.
        encoder: a ready-made ``BaseModel`` to use instead of building one.
        decoder: a ready-made decoder ``BaseModel`` to use instead of building one.
        tie_word_embeddings: the decoder uses the encoder's word embedding module.
        params_dtype: dtype of the parameters.
        kwargs: passed to both ``BaseModel`` constructors (they override ``args``).
    """

    parts = ("encoder", "decoder")

    def __init__(
        self,
        args: argparse.Namespace,
        encoder: BaseModel | None = None,
        decoder: BaseModel | None = None,
        tie_word_embeddings: bool = True,
        params_dtype: torch.dtype = torch.float,
        **kwargs,
    ):
        super().__init__()
        for given in (encoder, decoder):
            if given is not None and not isinstance(given, BaseModel):
                raise TypeError(f"EncoderDecoderModel expects BaseModel encoder/decoder, got {type(given).__name__}")
        self.encoder = encoder if encoder is not None else BaseModel(args, params_dtype=params_dtype, **kwargs)
        if "final" not in self.encoder.mixins:  # an encoder class may carry it already (MAEEncoder)
            self.encoder.add_mixin("final", EncoderFinalMixin())
        if decoder is None:
            decoder = BaseModel(decoder_args(args), params_dtype=params_dtype, is_decoder=True, **kwargs)
        self.decoder = decoder
        self.tie_word_embeddings = tie_word_embeddings
        if tie_word_embeddings:
            shared = self.encoder.transformer.word_embeddings
            if shared.weight.shape != self.decoder.transformer.word_embeddings.weight.shape:
                raise ValueError(
                    f"tie_word_embeddings needs equal embedding shapes: encoder {tuple(shared.weight.shape)}, "
                    f"decoder {tuple(self.decoder.transformer.word_embeddings.weight.shape)}"
                )
            self.decoder.transformer.word_embeddings = shared

    # ----------------------------------------------------------------- running
    def encode(self, input_ids: torch.Tensor, position_ids, attention_mask=None, **kw_args) -> torch.Tensor:
        """The encoder's final hidden states ``[b, s_enc, h]``. ``attention_mask``: ``None``
        (full) or a 1 = attend tensor such as ``[b, 1, 1, s_enc]`` for padding."""
        encoder_outputs, *_ = self.encoder(input_ids, position_ids, attention_mask, **kw_args)
        return encoder_outputs

    def decode(
        self,
        input_ids: torch.Tensor,
        position_ids,
        attention_mask=None,
        encoder_outputs=None,
        cross_attention_mask: torch.Tensor | None = None,
        **kw_args,
    ) -> list:
        """The decoder: ``[logits, *output_per_layers]``.

        ``attention_mask`` ``None`` is causal. ``encoder_outputs`` is the encoder's ``[b, s_enc, h]``
        or, when decoding step by step, a per-layer list of cached cross-attention ``(k, v)``
        pairs; ``None`` runs without cross-attention. ``cross_attention_mask`` (1 = attend, e.g.
        ``[b, 1, 1, s_enc]``) hides encoder positions; ``None`` shows them all.
        """
        if attention_mask is None:
            attention_mask = CAUSAL_MASK  # the backbone's own causal mask, which it may run with SDPA
        if cross_attention_mask is not None:
            cross_attention_mask = cross_attention_mask.to(self.decoder.transformer.word_embeddings.weight.dtype)
        return self.decoder(
            input_ids,
            position_ids,
            attention_mask,
            encoder_outputs=encoder_outputs,
            cross_attention_mask=cross_attention_mask,
            **kw_args,
        )

    def forward(
        self,
        enc_input_ids: torch.Tensor,
        enc_position_ids,
        dec_input_ids: torch.Tensor,
        dec_position_ids,
        *,
        enc_attention_mask=None,
        dec_attention_mask=None,
        cross_attention_mask=None,
        **kw_args,
    ) -> tuple:
        """Encode, then decode: ``(encoder_outputs, decoder_logits, *decoder_output_per_layers)``.

        ``cross_attention_mask`` defaults to ``enc_attention_mask`` (a ``[b, 1, 1, s_enc]``
        padding mask serves both); ``dec_attention_mask`` to causal.
        """
        if cross_attention_mask is None:
            cross_attention_mask = enc_attention_mask
        # The base class's encode/decode, explicitly: subclasses (T5) redeclare them without
        # position ids.
        encoder_outputs = EncoderDecoderModel.encode(
            self, enc_input_ids, enc_position_ids, enc_attention_mask, **kw_args
        )
        decoder_outputs, *mems = EncoderDecoderModel.decode(
            self,
            dec_input_ids,
            dec_position_ids,
            dec_attention_mask,
            encoder_outputs=encoder_outputs,
            cross_attention_mask=cross_attention_mask,
            **kw_args,
        )
        return (encoder_outputs, decoder_outputs, *mems)

    # ----------------------------------------------------------------- arguments and loading
    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = parser.add_argument_group("EncoderDecoderModel", "decoder settings that differ from the encoder's")
        add_override_args(group, "dec", DECODER_OVERRIDES)
        return parser
