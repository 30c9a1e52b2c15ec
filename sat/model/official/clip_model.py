"""CLIP: a Siamese pair of encoders whose projected, normalised outputs are compared.

``ImageEncoder`` is a ``ViTModel`` with a bias-free patch embedding (``PatchMixin``), a layer
norm before the first layer and the [CLS] state projected (``image_enc``); ``TextEncoder`` is a
causal ``BaseModel`` whose end-of-text state is projected (``text_enc``). Both use QuickGELU.
``CLIP`` holds the two (``image_encoder``, ``text_encoder``) and the learned ``logit_scale``.
The text tower's sizes come from the ``--text-*`` arguments, each falling back to the image
tower's when unset.
"""

from __future__ import annotations

import argparse

import torch

from sat.model.base_model import BaseMixin, BaseModel, fill_model_arg_defaults
from sat.model.composite import CompositeModel, add_override_args, override_args
from sat.model.encoder_decoder_model import DECODER_OVERRIDES
from sat.model.official.vit_model import ImagePatchEmbeddingMixin, ViTModel
from sat.ops.attention import CAUSAL_MASK
from sat.ops.layernorm import LayerNorm

# Sizes a ``--text-<name>`` argument overrides for the text tower (else it copies the image's):
# those an encoder-decoder's decoder may change, and the vocabulary.
TEXT_OVERRIDES = ("vocab_size", *DECODER_OVERRIDES)
# The pooling rule of ``--text-eos-token-id``: the position of the row's highest id.
HIGHEST_ID = -1


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation, ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


class QuickGELUActivation(torch.nn.Module):
    """``quick_gelu`` as a module (the original's name)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return quick_gelu(input)


def tower_kwargs(layernorm_epsilon: float | None, activation_func, kwargs: dict) -> dict:
    """The ``BaseModel`` keywords of a tower: its activation, and the layer-norm epsilon when
    given (else ``args.layernorm_epsilon``'s)."""
    extra = {} if layernorm_epsilon is None else {"layernorm_epsilon": layernorm_epsilon}
    return dict(kwargs, activation_func=activation_func, **extra)


class ImageMixin(BaseMixin):
    """A layer norm on the embeddings before the first layer (``pre_layernorm``); the [CLS]
    token's final state projected to the shared space (``visual_projection``)."""

    def __init__(self, vision_embed_dim: int, projection_dim: int, layernorm_epsilon: float):
        super().__init__()
        self.pre_layernorm = LayerNorm(vision_embed_dim, eps=layernorm_epsilon)
        self.visual_projection = torch.nn.Linear(vision_embed_dim, projection_dim, bias=False)

    @BaseMixin.non_conflict
    def layer_forward(self, hidden_states, mask, *args, old_impl, **kw_args):
        if kw_args["layer_id"] == 0:
            hidden_states = self.pre_layernorm(hidden_states)  # [b, s, h]
        return old_impl(hidden_states, mask, *args, **kw_args)

    def final_forward(self, logits, **kw_args):
        return self.visual_projection(logits[:, 0])  # [b, projection_dim]


class PatchMixin(ImagePatchEmbeddingMixin):
    """ViT's patch embedding without a bias, as CLIP's."""

    def __init__(self, in_channels: int, hidden_size: int, property):
        super().__init__(in_channels, hidden_size, property, bias=False)
        self.property = property


class ImageEncoder(ViTModel):
    """CLIP's image tower: ``forward(input_ids, position_ids, attention_mask, image=...)``
    returns ``[image_embeds [b, projection_dim], *output_per_layers]`` (not normalised);
    ``input_ids`` is the [CLS] id, ``[b, 1]`` zeros. Its [CLS] table is replicated under model
    parallelism (``ViTModel.replicate_special_tokens``)."""

    replicate_special_tokens = True

    def __init__(
        self, args, transformer=None, layernorm_epsilon: float | None = None, activation_func=quick_gelu, **kw
    ):
        super().__init__(args, transformer=transformer, **tower_kwargs(layernorm_epsilon, activation_func, kw))
        self.del_mixin("patch_embedding")
        patches = PatchMixin(args.in_channels, self.transformer.hidden_size, self.transformer.property)
        self.add_mixin("patch_embedding", patches)

    def add_head(self, args, hidden_size: int) -> None:
        mixin = ImageMixin(hidden_size, args.projection_dim, self.transformer.layernorm_epsilon)
        self.add_mixin("image_enc", mixin)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("CLIP-image", "CLIP image encoder Configurations")
        group.add_argument("--projection-dim", type=int, default=512, help="size of the shared embedding space")
        return super().add_model_specific_args(parser)


class TextMixin(BaseMixin):
    """The final state at ``pool_positions`` (a ``[b]`` keyword; the last token without it)
    projected to the shared space (``text_projection``)."""

    def __init__(self, text_embed_dim: int, projection_dim: int):
        super().__init__()
        self.text_projection = torch.nn.Linear(text_embed_dim, projection_dim, bias=False)

    def final_forward(self, logits, **kw_args):
        positions = kw_args.get("pool_positions")
        if positions is None:
            pooled = logits[:, -1]  # [b, h]
        else:
            pooled = logits[torch.arange(logits.shape[0], device=logits.device), positions]  # [b, h]
        return self.text_projection(pooled)  # [b, projection_dim]


class TextEncoder(BaseModel):
    """CLIP's text tower, always causal: ``forward(input_ids, position_ids=None,
    attention_mask=None)`` returns ``[text_embeds [b, projection_dim], *output_per_layers]``.

    ``attention_mask`` (1 = attend, ``[s, s]`` or ``[b, 1, s, s]``, e.g. padding) is combined
    with the causal mask. ``position_ids`` default to ``0..s-1``. The pooled token is the first
    ``text_eos_token_id`` of each row (``-1``: the row's highest id, CLIP's end-of-text being
    its vocabulary's last token), or with ``text_eos_token_id`` unset the last token.
    """

    def __init__(
        self, args, transformer=None, layernorm_epsilon: float | None = None, activation_func=quick_gelu, **kw
    ):
        super().__init__(args, transformer=transformer, **tower_kwargs(layernorm_epsilon, activation_func, kw))
        self.eos_token_id = getattr(args, "text_eos_token_id", None)
        self.add_mixin("text_enc", TextMixin(self.transformer.hidden_size, args.projection_dim))

    def pool_positions(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The ``[b]`` position each row is pooled at, or ``None`` for the last token."""
        if self.eos_token_id is None:
            return None
        if self.eos_token_id == HIGHEST_ID:
            return input_ids.argmax(dim=-1)
        return (input_ids == self.eos_token_id).int().argmax(dim=-1)  # the first end-of-text

    def forward(self, input_ids, position_ids=None, attention_mask=None, **kw_args):
        seq = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0)  # [1, s]
        if attention_mask is None or (isinstance(attention_mask, int) and attention_mask == CAUSAL_MASK):
            attention_mask = CAUSAL_MASK
        else:
            causal = torch.ones(seq, seq, device=attention_mask.device, dtype=attention_mask.dtype).tril()
            attention_mask = attention_mask * causal  # [b, 1, s, s] or [s, s]
        kw_args.setdefault("pool_positions", self.pool_positions(input_ids))
        return super().forward(input_ids, position_ids, attention_mask, **kw_args)


def text_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every ``text_<name>`` that is set replacing ``<name>``."""
    return override_args(args, "text", TEXT_OVERRIDES)


class CLIP(CompositeModel):
    """An ``ImageEncoder`` on ``args`` and a ``TextEncoder`` on ``text_args(args)``.

    ``forward`` returns ``(image_embeds, text_embeds, logits_per_text, logits_per_image)``:
    the embeddings L2-normalised, ``[n_img, p]`` and ``[n_txt, p]``, and their cosine
    similarities times ``exp(logit_scale)``, ``[n_txt, n_img]`` and its transpose.
    ``layernorm_epsilon`` overrides ``args.layernorm_epsilon`` for both towers.
    """

    parts = ("image_encoder", "text_encoder")

    def __init__(
        self,
        args: argparse.Namespace,
        layernorm_epsilon: float | None = None,
        params_dtype: torch.dtype = torch.float,
        **kwargs,
    ):
        super().__init__()
        fill_model_arg_defaults(CLIP, args)
        towers = dict(layernorm_epsilon=layernorm_epsilon, params_dtype=params_dtype, **kwargs)
        self.image_encoder = ImageEncoder(args, **towers)  # sets args.max_sequence_length to its own
        self.text_encoder = TextEncoder(text_args(args), **towers)
        self.logit_scale_init_value = args.logit_scale_init_value
        self.logit_scale = torch.nn.Parameter(torch.full([], args.logit_scale_init_value, dtype=params_dtype))

    def encode_image(self, input_ids, position_ids, attention_mask=None, **kw_args) -> list:
        """``[image_embeds [b, projection_dim], *output_per_layers]``, not normalised."""
        return self.image_encoder(input_ids, position_ids, attention_mask, **kw_args)

    def encode_text(self, input_ids, position_ids, attention_mask=None, **kw_args) -> list:
        """``[text_embeds [b, projection_dim], *output_per_layers]``, not normalised."""
        return self.text_encoder(input_ids, position_ids, attention_mask, **kw_args)

    def forward(
        self,
        image_input_ids,
        image_position_ids,
        text_input_ids,
        text_position_ids,
        *,
        image_attention_mask=None,
        text_attention_mask=None,
        **kw_args,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image=`` (pixels ``[n_img, c, H, W]``) goes in ``kw_args``."""
        image_embeds, *_ = self.encode_image(
            image_input_ids, image_position_ids, attention_mask=image_attention_mask, **kw_args
        )
        text_embeds, *_ = self.encode_text(
            text_input_ids, text_position_ids, attention_mask=text_attention_mask, **kw_args
        )
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)  # [n_img, p]
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)  # [n_txt, p]
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()  # [n_txt, n_img]
        return image_embeds, text_embeds, logits_per_text, logits_per_text.t()

    # ----------------------------------------------------------------- arguments and loading
    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """The text tower's ``--text-*`` sizes, its pooling token and the logit scale. The
        image tower's arguments are ``ImageEncoder.add_model_specific_args``'s, as in the
        original (its scripts add both)."""
        group = parser.add_argument_group("SiameseModel", "CLIP")
        add_override_args(group, "text", TEXT_OVERRIDES)
        group.add_argument(
            "--text-eos-token-id",
            type=int,
            default=None,
            help="pool the text at this token's first position (-1: the highest id's); unset: the last token",
        )
        group.add_argument("--logit-scale-init-value", type=float, default=2.6592, help="log(1 / 0.07)")
        return parser

    @classmethod
    def list_avail_args(cls, print: bool = True) -> argparse.ArgumentParser:
        """The parser of every argument CLIP reads: the common ones, the image tower's, its own."""
        parser = BaseModel.list_avail_args.__func__(ImageEncoder, print=False)
        cls.add_model_specific_args(parser)
        if print:
            from sat.helpers import print_parser

            print_parser(parser)
        return parser
