"""YOLOS: a ViT detector (Fang et al. 2021). ``num_det_tokens`` detection tokens follow the
patches (``post_len``); from each one's final hidden state an MLP gives class logits (the last
class is "no object") and another a box ``(cx, cy, w, h)`` in ``[0, 1]``.

The special tokens are the word-embedding rows: ``[CLS]`` (row 0), then the detection tokens
(rows ``1..num_det_tokens``), so ``input_ids = arange(1 + num_det_tokens)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin
from sat.model.official.vit_model import ImagePatchEmbeddingMixin, ViTModel, ViTProperty


class NewTokenMixin(ImagePatchEmbeddingMixin):
    """The patch embedding, whose ``reinit`` grows the word embeddings to ``new_token_size``
    rows (the old rows kept, the new ones initialised afresh): a ViT checkpoint with one
    ``[CLS]`` row becomes a YOLOS with detection tokens."""

    def __init__(
        self,
        new_token_size: int,
        in_channels: int,
        hidden_size: int,
        property: ViTProperty,
        init_method_std: float = 0.02,
    ):
        super().__init__(in_channels, hidden_size, property)
        self.new_token_size = new_token_size
        self.init_method_std = init_method_std

    @torch.no_grad()
    def reinit(self, parent_model=None) -> None:
        old = self.transformer.word_embeddings.weight
        table = torch.nn.Embedding(self.new_token_size, old.shape[1], dtype=old.dtype, device=old.device)
        torch.nn.init.normal_(table.weight, mean=0.0, std=self.init_method_std)
        kept = min(old.shape[0], self.new_token_size)
        table.weight[:kept] = old[:kept]
        self.transformer.word_embeddings = table
        self.transformer.vocab_size = self.new_token_size


class MLP(torch.nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's prediction head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        sizes = [input_dim] + [hidden_dim] * (num_layers - 1)
        outputs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(n, k) for n, k in zip(sizes, outputs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


class DetHeadMixin(BaseMixin):
    """``final_forward``: ``{"pred_logits": [b, n, num_det_classes], "pred_boxes": [b, n, 4]}``
    from the last ``num_det_tokens`` positions."""

    def __init__(self, args):
        super().__init__()
        self.num_det_tokens = args.num_det_tokens
        self.class_embed = MLP(args.hidden_size, args.hidden_size, args.num_det_classes, 3)
        self.bbox_embed = MLP(args.hidden_size, args.hidden_size, 4, 3)

    def final_forward(self, logits, **kw_args):
        detections = logits[:, -self.num_det_tokens :]  # [b, n, h]
        return {"pred_logits": self.class_embed(detections), "pred_boxes": self.bbox_embed(detections).sigmoid()}


class YOLOS(ViTModel):
    """``ViTModel`` with ``post_len = num_det_tokens`` detection tokens, ``NewTokenMixin`` as
    ``patch_embedding`` and ``DetHeadMixin`` (``det_head``) instead of ``cls``; the output is
    the head's dict. ``vocab_size`` must be ``pre_len + num_det_tokens``, or, building from a
    ViT checkpoint (``vocab_size=1``), grow to it with ``patch_embedding.reinit``."""

    def __init__(self, args, transformer=None, **kwargs):
        if args.post_len != args.num_det_tokens:
            raise ValueError(
                f"YOLOS puts its detection tokens after the patches: post_len ({args.post_len}) must equal "
                f"num_det_tokens ({args.num_det_tokens})"
            )
        super().__init__(args, transformer=transformer, **kwargs)
        special = args.pre_len + args.num_det_tokens
        self.del_mixin("patch_embedding")
        self.add_mixin(
            "patch_embedding", NewTokenMixin(special, args.in_channels, args.hidden_size, self.transformer.property)
        )
        self.del_mixin("pooler" if "pooler" in self.mixins else "cls")
        self.add_mixin("det_head", DetHeadMixin(args))

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("YOLOS", "YOLOS Configurations")
        group.add_argument("--num-det-tokens", type=int, default=100)
        group.add_argument("--num-det-classes", type=int, default=92, help="with the last, 'no object' (COCO: 91 + 1)")
        parser = super().add_model_specific_args(parser)
        parser.set_defaults(post_len=100)  # the 100 detection tokens after the patches
        return parser
