"""ViT: the image cut into patches (``patch_embedding``), learned position embeddings that
``reinit`` resizes to a new grid (``pos_embedding``), and a class head on token 0 (``cls``),
or with ``--headless`` the final hidden states and a pooler (``pooler``, HF's ``ViTModel``).

The sequence is ``pre_len`` special tokens (``[CLS]``: ``input_ids[:, :pre_len]`` looked up in
the word embeddings), the patches of ``kw_args['image']``, then ``post_len`` special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.official.bert_model import BertPoolerMixin
from sat.mpu import get_model_parallel_world_size


class ViTProperty:
    """Image geometry: ``seq_len = pre_len + num_patches + post_len``."""

    def __init__(self, image_size: Sequence[int], patch_size: int, pre_len: int, post_len: int):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be [height, width], got {image_size!r}")
        self.image_size = tuple(image_size)
        self.patch_size = patch_size
        self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.pre_len = pre_len
        self.post_len = post_len
        self.seq_len = pre_len + self.num_patches + post_len

    @classmethod
    def from_args(cls, args) -> ViTProperty:
        """The geometry ``args`` describe (``image_size``, ``patch_size``, ``pre_len``, ``post_len``)."""
        return cls(args.image_size, args.patch_size, args.pre_len, args.post_len)


class ImagePatchEmbeddingMixin(BaseMixin):
    """``word_embedding_forward``: special tokens around the patch embeddings of ``image``."""

    def __init__(self, in_channels: int, hidden_size: int, property: ViTProperty, bias: bool = True):
        super().__init__()
        size = property.patch_size
        self.proj = torch.nn.Conv2d(in_channels, hidden_size, size, stride=size, bias=bias)

    def embed_patches(self, **kw_args) -> torch.Tensor:
        """The patch embeddings of ``kw_args['image']``: ``[b, num_patches, h]``."""
        return self.proj(kw_args["image"]).flatten(2).transpose(1, 2)  # [b, num_patches, h]

    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        prop = self.transformer.property
        patches = self.embed_patches(**kw_args)  # [b, num_patches, h]
        pre = self.transformer.word_embeddings(input_ids[:, : prop.pre_len])  # [b, pre_len, h]
        post = self.transformer.word_embeddings(input_ids[:, prop.pre_len : prop.pre_len + prop.post_len])
        return torch.cat([pre, patches, post], dim=1)  # [b, seq_len, h]


class InterpolatedPositionEmbeddingMixin(BaseMixin):
    """``position_embedding_forward``: the whole position table, one row per sequence place."""

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return self.transformer.position_embeddings.weight.unsqueeze(0)  # [1, seq_len, h]

    @torch.no_grad()
    def reinit(self, parent_model=None, property: ViTProperty | None = None) -> None:
        """Resize the table to ``property``'s grid: the patch rows by bicubic interpolation,
        the special-token rows kept (new ones, when ``property`` has more, initialised afresh).
        Without ``property`` there is nothing to resize."""
        if property is None:
            return
        t, old = self.transformer, self.transformer.property
        weight = t.position_embeddings.weight
        grid = weight[old.pre_len : old.pre_len + old.num_patches]  # [old patches, h]
        grid = grid.reshape(1, *old.grid_size, -1).permute(0, 3, 1, 2)  # [1, h, gh, gw]
        grid = F.interpolate(grid.float(), size=property.grid_size, mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(property.num_patches, -1).to(weight.dtype)  # [patches, h]

        table = torch.nn.Embedding(property.seq_len, weight.shape[1], dtype=weight.dtype, device=weight.device)
        torch.nn.init.normal_(table.weight, mean=0.0, std=0.02)
        new = table.weight
        pre, post = min(old.pre_len, property.pre_len), min(old.post_len, property.post_len)
        new[:pre] = weight[:pre]
        new[property.pre_len : property.pre_len + property.num_patches] = grid
        start, old_start = property.pre_len + property.num_patches, old.pre_len + old.num_patches
        new[start : start + post] = weight[old_start : old_start + post]
        t.position_embeddings = table
        t.property = property
        t.max_sequence_length = property.seq_len


class ClsMixin(BaseMixin):
    """``final_forward``: ``classifier`` on the first token's final hidden state."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = torch.nn.Linear(hidden_size, num_classes)

    def final_forward(self, logits, **kw_args):
        return self.classifier(logits[:, 0])  # [b, num_classes]


class ViTModel(BaseModel):
    """``max_sequence_length`` is not a free argument: ``pre_len + num_patches + post_len``.
    ``get_args`` computes it and building sets it on ``args``, as the original's constructor did
    (scripts read ``args.max_sequence_length`` after building the model).

    A subclass that sets ``replicate_special_tokens`` keeps the special-token table
    (``transformer.word_embeddings``) whole on every model-parallel rank, a plain
    ``torch.nn.Embedding``: a one-row ``[CLS]`` table cannot be split (CLIP, EVA-CLIP).
    """

    replicate_special_tokens = False

    def __init__(self, args, transformer=None, **kwargs):
        property = ViTProperty.from_args(args)
        kwargs.setdefault("activation_func", F.gelu)
        kwargs["max_sequence_length"] = args.max_sequence_length = property.seq_len
        replicate = self.replicate_special_tokens and transformer is None
        if replicate:  # build with a table the ranks can split, then replace it
            world = get_model_parallel_world_size()
            kwargs.setdefault("vocab_size", -(-args.vocab_size // world) * world)
        super().__init__(args, transformer=transformer, **kwargs)
        if replicate:
            self._replicate_special_tokens(args.vocab_size, getattr(args, "skip_init", False))
        self.transformer.property = property
        hidden_size = self.transformer.hidden_size
        self.add_mixin("patch_embedding", ImagePatchEmbeddingMixin(args.in_channels, hidden_size, property))
        self.add_mixin("pos_embedding", InterpolatedPositionEmbeddingMixin())
        self.add_head(args, hidden_size)

    def _replicate_special_tokens(self, vocab_size: int, skip_init: bool) -> None:
        t = self.transformer
        weight = t.word_embeddings.weight
        table = torch.nn.Embedding(vocab_size, t.hidden_size, device=weight.device, dtype=weight.dtype)
        if not skip_init and weight.device.type != "meta":
            torch.nn.init.normal_(table.weight, mean=0.0, std=t.init_method_std)
        t.word_embeddings = table
        t.vocab_size = vocab_size

    def add_head(self, args, hidden_size: int) -> None:
        """Add the mixin on the final hidden states: ``cls``, or ``pooler`` with ``--headless``.
        A subclass with a head of its own (CLIP's ``ImageEncoder``) overrides this."""
        if getattr(args, "headless", False):
            self.add_mixin("pooler", BertPoolerMixin(hidden_size))
        else:
            self.add_mixin("cls", ClsMixin(hidden_size, args.num_classes))

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("ViT", "ViT Configurations")
        group.add_argument("--image-size", nargs="+", type=int, default=[224, 224])
        group.add_argument("--pre-len", type=int, default=1)  # [CLS]
        group.add_argument("--post-len", type=int, default=0)  # e.g. YOLOS's [DET] tokens
        group.add_argument("--in-channels", type=int, default=3)
        group.add_argument("--num-classes", type=int, default=21843)
        group.add_argument("--patch-size", type=int, default=16)
        group.add_argument(
            "--headless",
            action="store_true",
            help="no classifier: output the final hidden states, with a pooler (HF's ViTModel)",
        )
        return super().add_model_specific_args(parser)

    @classmethod
    def get_args(cls, **kwargs):
        args = super().get_args(**kwargs)
        args.max_sequence_length = ViTProperty.from_args(args).seq_len
        return args
