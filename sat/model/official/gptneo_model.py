"""GPT-Neo: GPT-2's layer with unscaled, always-causal attention whose layers alternate between
global attention and local attention over a sliding window (``gpt-attn``), token types embedded
with the word embeddings (``gpt-type``), and the word embeddings as output head (tied; an own
head ``lm`` with ``--untie-word-embeddings``, none with ``--headless``).

The original's parameters are the backbone's own, ``query_key_value.bias`` included (HF's q/k/v
have no bias: ``sat.hf`` fills it with zeros), so its checkpoints load unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.encoder_decoder_model import EncoderFinalMixin
from sat.model.layers import attention_fn_default
from sat.model.official.gpt2_model import GPT2FinalMixin
from sat.ops.attention import FULL, attention_mask_kind, causal_attention_mask

ATTENTION_TYPES = ("global", "local")
DEFAULT_ATTENTION_TYPES = ("global", "local")  # HF's default pattern, repeated over the layers
DEFAULT_WINDOW_SIZE = 256  # HF's default


def expand_attention_types(value, num_layers: int) -> list[str]:
    """Per-layer attention types from ``--attention-types``.

    Accepted: ``None`` (global and local alternating), a list of ``"global"``/``"local"`` (what
    ``model_config.json`` holds), HF's nested form ``[[["global", "local"], n]]``, or a string: a
    JSON list or comma-separated names. A pattern shorter than ``num_layers`` repeats.
    """
    if value is None:
        pattern: list = list(DEFAULT_ATTENTION_TYPES)
    elif isinstance(value, str):
        text = value.strip()
        pattern = json.loads(text) if text.startswith("[") else [name.strip() for name in text.split(",")]
    else:
        pattern = list(value)
    if pattern and isinstance(pattern[0], list | tuple):  # HF: [[types, repeats], ...]
        pattern = [name for names, repeats in pattern for _ in range(repeats) for name in names]
    if not pattern or num_layers % len(pattern):
        raise ValueError(f"attention_types {value!r} does not cover {num_layers} layers (a pattern must divide it)")
    unknown = sorted({name for name in pattern if name not in ATTENTION_TYPES})
    if unknown:
        raise ValueError(f"attention_types may only be 'global' or 'local', got {unknown}")
    return pattern * (num_layers // len(pattern))


def parse_window_size(value) -> int:
    """``--window-size`` (a string on the command line, an int in ``model_config.json``)."""
    window = DEFAULT_WINDOW_SIZE if value is None else int(value)
    if window < 1:
        raise ValueError(f"window_size must be at least 1, got {value!r}")
    return window


class GPTNeoTypeMixin(BaseMixin):
    """``word_embedding_forward``: token types (``token_type_ids=`` to the model), when given, are
    embedded with the word embeddings and added, as in GPT-Neo."""

    @BaseMixin.non_conflict
    def word_embedding_forward(
        self, input_ids, output_cross_layer, old_impl, token_type_ids=None, **kw_args
    ) -> torch.Tensor:
        embeddings = old_impl(input_ids, output_cross_layer=output_cross_layer, **kw_args)  # [b, s, h]
        if token_type_ids is None:
            return embeddings
        return embeddings + self.transformer.word_embeddings(token_type_ids)


class GPTNeoAttentionMixin(BaseMixin):
    """``attention_fn``: GPT-Neo's attention on top of whatever came before (the default kernel).

    Every layer is causal whatever mask it gets (the mask only removes keys, padding); scores
    are not scaled by ``1 / sqrt(hn)``; a ``"local"`` layer sees only the ``window_size`` last
    keys up to its query (query ``i`` sees key ``j`` when ``0 <= i - j < window_size``). The
    window counts every key attention receives, aligned to the last one, as in the original
    (cached keys, and a prefix-tuning prefix, count as earlier positions). ``max_positions`` is
    the original's signature: masks are built at the lengths each call needs.
    """

    def __init__(self, attention_types: Sequence[str], window_size: int, max_positions: int):
        super().__init__()
        self.attention_types = expand_attention_types(list(attention_types), len(attention_types))
        self.window_size = parse_window_size(window_size)
        self.max_positions = max_positions

    def window_of_layer(self, layer_id: int) -> int:
        """The sliding window of layer ``layer_id``; 0 for a global layer."""
        return self.window_size if self.attention_types[layer_id] == "local" else 0

    @BaseMixin.non_conflict
    def attention_fn(
        self,
        q,
        k,
        v,
        mask,
        dropout_fn,
        old_impl=attention_fn_default,
        scaling_attention_score=False,
        cross_attention=False,
        sliding_window=0,  # a backbone window: this layer's type decides instead
        **kw_args,
    ) -> torch.Tensor:
        if cross_attention:  # GPT-Neo has none; a decoder built from it keeps the default's
            return old_impl(q, k, v, mask, dropout_fn, cross_attention=True, **kw_args)
        sq, sk = q.shape[2], k.shape[2]
        if attention_mask_kind(mask) == FULL:  # no mask given: GPT-Neo is causal still
            mask = causal_attention_mask(sq, mask.dtype, mask.device, key_length=sk)
        elif attention_mask_kind(mask) is None:  # padding or custom: keep causality too
            causal = torch.ones(sq, sk, dtype=torch.bool, device=mask.device).tril(sk - sq)  # [sq, sk]
            mask = mask & causal if mask.dtype == torch.bool else mask * causal.to(mask.dtype)
        return old_impl(
            q,
            k,
            v,
            mask,
            dropout_fn,
            scaling_attention_score=scaling_attention_score,
            sliding_window=self.window_of_layer(kw_args["layer_id"]),
            **kw_args,
        )


class GPTNeoModel(BaseModel):
    """GPT-Neo (EleutherAI): the backbone with the ``gpt-type`` and ``gpt-attn`` mixins, built
    from ``--attention-types`` and ``--window-size``; see the module docstring for the head."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        types = expand_attention_types(getattr(args, "attention_types", None), args.num_layers)
        window = parse_window_size(getattr(args, "window_size", None))
        self.add_mixin("gpt-type", GPTNeoTypeMixin())
        self.add_mixin("gpt-attn", GPTNeoAttentionMixin(types, window, args.max_sequence_length))
        if getattr(args, "headless", False):
            self.add_mixin("final", EncoderFinalMixin())  # hidden states out, as HF's GPTNeoModel
        elif getattr(args, "untie_word_embeddings", False):
            head = GPT2FinalMixin(args.vocab_size, args.hidden_size, skip_init=getattr(args, "skip_init", False))
            self.add_mixin("lm", head)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("GPTNeo", "GPTNeo Configurations")
        group.add_argument(
            "--attention-types",
            type=str,
            help="per-layer 'global'/'local', comma-separated or a JSON list; a shorter pattern repeats "
            "(default: global,local alternating)",
        )
        group.add_argument("--window-size", type=str, help=f"local attention window (default {DEFAULT_WINDOW_SIZE})")
        group.add_argument(
            "--untie-word-embeddings",
            action="store_true",
            help="an output head 'lm' of its own (HF tie_word_embeddings=False)",
        )
        group.add_argument("--headless", action="store_true", help="no LM head: output the final hidden states")
        return parser
