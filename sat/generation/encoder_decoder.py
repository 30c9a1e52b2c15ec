"""Generation for encoder-decoder models (T5): the encoder runs once, the decoder is cached."""

from __future__ import annotations

import torch

from sat.generation.autoregressive_sampling import filling_sequence
from sat.model.encoder_decoder_model import EncoderDecoderModel


@torch.no_grad()
def encoder_decoder_filling_sequence(
    model: EncoderDecoderModel,
    enc_input_ids: torch.Tensor,
    seq: torch.Tensor,
    batch_size: int,
    strategy=None,
    enc_attention_mask: torch.Tensor | None = None,
    enc_position_ids: torch.Tensor | None = None,
    **kw_args,
):
    """``filling_sequence`` for the decoder of ``model``, conditioned on one source.

    The encoder runs once on ``enc_input_ids [1, s_enc]``. The decoder generates ``seq`` (its
    start token, for T5 ``decoder_start_token_id`` 0, then ``-1`` per token to generate) with its
    self-attention keys/values cached and the cross-attention keys/values computed at the first
    step and reused after it. The decoder needs a ``CachedAutoregressiveMixin``:
    ``model.decoder.add_mixin("auto-regressive", CachedAutoregressiveMixin())``.

    Args:
        enc_attention_mask: 1 = attend, e.g. ``[1, 1, 1, s_enc]`` to hide padding; it hides the
            same positions from the decoder's cross-attention.
        enc_position_ids: the encoder's positions (``None`` for T5, which has none).
        kw_args: the other arguments of ``filling_sequence`` (``strategy``, ``mems``...).
    Returns:
        What ``filling_sequence`` returns: ``(tokens [batch_size, len(seq)], mems)`` for
        ``BaseStrategy``.
    """
    if enc_input_ids.dim() != 2 or enc_input_ids.shape[0] != 1:
        raise ValueError(
            "enc_input_ids must be one source [1, s_enc] (batch_size samples share it), "
            f"got {tuple(enc_input_ids.shape)}"
        )
    dtype = next(model.parameters()).dtype
    if enc_attention_mask is not None:
        enc_attention_mask = enc_attention_mask.to(dtype)
    # The base class's encode: subclasses (T5) redeclare it without position ids.
    encoder_outputs = EncoderDecoderModel.encode(model, enc_input_ids, enc_position_ids, enc_attention_mask)
    return filling_sequence(
        model.decoder,
        seq,
        batch_size,
        strategy,
        encoder_outputs=encoder_outputs,
        cross_attention_mask=enc_attention_mask,
        **kw_args,
    )
