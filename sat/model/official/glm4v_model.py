"""GLM-4V (``GLM4VModel``): ChatGLM4 reading an image. The ``eva`` mixin (``ImageMixin``) runs
an EVA2-CLIP tower (``vit_model``) on ``vision_image``, halves its patch grid with a stride-2
convolution (``conv``), projects it with a GLU (``linear_proj``) and writes ``[boi, image
tokens, eoi]`` over the places of ``image_embed_mask`` in the word embeddings.

Every ``vision_<name>`` keyword of ``forward`` goes to the tower as ``<name>`` (the original's
processor gives ``vision_image``, ``vision_input_ids`` and ``vision_attention_mask``). One-token
steps (cached generation) and calls without ``vision_*`` keywords embed text only.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from sat.checkpoint.model_config import extract_model_specific_args_to_dump
from sat.model.base_model import BaseMixin
from sat.model.official.chatglm4_model import ChatGLM4Model
from sat.model.official.eva_clip_model import EVA2CLIPModel

# What the tower takes from the language model's arguments: placement, dtype and mode.
INHERITED_ARGS = (
    "world_size",
    "rank",
    "local_rank",
    "skip_init",
    "use_gpu_initialization",
    "deepspeed",
    "bf16",
    "fp16",
    "mode",
    "device",
    "checkpoint_activations",
    "checkpoint_num_layers",
    "model_parallel_size",
)
DEFAULT_TOWER = "eva-clip-4b-14-x-drop-last-layer"  # under $SAT_HOME, when --eva_args is empty


def init_weights(module: torch.nn.Module) -> None:
    """The projector's initialisation: linear weights N(0, 0.02), zero biases, unit norms."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
    elif isinstance(module, torch.nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, torch.nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


class GLU(torch.nn.Module):
    """``dense_4h_to_h(silu(gate_proj(y)) * dense_h_to_4h(y))`` with ``y = gelu(norm1(linear_proj(x)))``."""

    def __init__(self, args: argparse.Namespace, in_features: int):
        super().__init__()
        inner = args.inner_hidden_size or 4 * args.hidden_size
        self.linear_proj = torch.nn.Linear(in_features, args.hidden_size, bias=False)
        self.norm1 = torch.nn.LayerNorm(args.hidden_size)
        self.act1 = torch.nn.GELU()
        self.dense_h_to_4h = torch.nn.Linear(args.hidden_size, inner, bias=False)
        self.gate_proj = torch.nn.Linear(args.hidden_size, inner, bias=False)
        self.dense_4h_to_h = torch.nn.Linear(inner, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.linear_proj(x)))  # [..., h]
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))  # [..., h]


def tower_args(args: argparse.Namespace, eva_args: dict) -> argparse.Namespace:
    """``EVA2CLIPModel`` arguments: ``eva_args`` with the language model's placement, dtype
    and mode, and no dropout (the tower is used frozen)."""
    inherited = {name: getattr(args, name) for name in INHERITED_ARGS if hasattr(args, name)}
    values = {"hidden_dropout": 0.0, "attention_dropout": 0.0, **eva_args, **inherited}
    return EVA2CLIPModel.get_args(**values)


class ImageMixin(BaseMixin):
    """The image path of ``GLM4VModel`` (mixin ``eva``): ``vit_model``, ``conv``,
    ``linear_proj`` (``GLU``), ``boi`` and ``eoi``. With empty ``--eva_args`` the tower is
    loaded from ``$SAT_HOME/eva-clip-4b-14-x-drop-last-layer`` and its arguments are written
    back into ``args.eva_args`` (so ``model_config.json`` rebuilds it)."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        if args.eva_args:
            self.vit_model = EVA2CLIPModel(tower_args(args, args.eva_args))
        else:
            url = os.path.join(os.environ.get("SAT_HOME", os.path.expanduser("~/.sat_models")), DEFAULT_TOWER)
            if not os.path.isdir(url):
                raise ValueError(
                    f"--eva_args is empty, so the EVA2-CLIP tower is loaded from {url}, which is not a "
                    "directory: pass the tower's arguments as --eva_args (JSON) or put its checkpoint there"
                )
            self.vit_model, vit_args = EVA2CLIPModel.from_pretrained(url, tower_args(args, {}))
            args.eva_args = extract_model_specific_args_to_dump(vit_args, self.vit_model)
        if args.proj_hidden_size is None:
            args.proj_hidden_size = args.hidden_size
        tower_hidden = self.vit_model.transformer.hidden_size
        self.conv = torch.nn.Conv2d(tower_hidden, args.proj_hidden_size, kernel_size=2, stride=2)
        self.linear_proj = GLU(args, args.proj_hidden_size)
        self.linear_proj.apply(init_weights)
        self.image_length = args.image_length
        self.boi = torch.nn.Parameter(torch.empty(1, 1, args.hidden_size))
        self.eoi = torch.nn.Parameter(torch.empty(1, 1, args.hidden_size))
        torch.nn.init.xavier_uniform_(self.boi)
        torch.nn.init.xavier_uniform_(self.eoi)

    def image_embeddings(self, vision_inputs: dict) -> torch.Tensor:
        """``[b, 2 + (g / 2)^2, h]``: ``boi``, the projected image tokens of the tower's
        ``g x g`` patch grid, ``eoi``."""
        vision_inputs.setdefault("position_ids", None)
        mask = vision_inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and bool((mask > 0).all()):
            vision_inputs["attention_mask"] = None  # the processor's all-ones placeholder: patches see each other
        image = self.vit_model(**vision_inputs)[0]  # [b, g * g, e]
        batch, patches, width = image.shape
        grid = int(patches**0.5)
        image = image.view(batch, grid, grid, width).permute(0, 3, 1, 2)  # [b, e, g, g]
        image = self.conv(image).flatten(2).transpose(1, 2)  # [b, (g / 2)^2, proj]
        image = self.linear_proj(image)  # [b, (g / 2)^2, h]
        return torch.cat((self.boi.expand(batch, -1, -1), image, self.eoi.expand(batch, -1, -1)), dim=1)

    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        vision_inputs = {
            key[len("vision_") :]: value
            for key, value in kw_args.items()
            if key.startswith("vision_") and key != "vision_expert_mask"
        }
        embeddings = self.transformer.word_embeddings(input_ids)  # [b, s, h]
        if input_ids.shape[1] == 1 or not vision_inputs:
            return embeddings
        if kw_args.get("image_embed_mask") is None:
            raise ValueError(f"vision inputs {sorted(vision_inputs)} given without image_embed_mask [b, s]")
        image = self.image_embeddings(vision_inputs)  # [b, n, h]
        mask = kw_args["image_embed_mask"].bool()  # [b, s'], n ones per row
        if mask.shape[1] < input_ids.shape[1]:  # generation without a cache: text appended after the prompt
            mask = F.pad(mask, (0, input_ids.shape[1] - mask.shape[1]))
        places = mask.sum(dim=1)  # [b]
        if not bool((places == image.shape[1]).all()):
            raise ValueError(
                f"image_embed_mask marks {places.tolist()} places per row; each image gives {image.shape[1]} "
                f"embeddings (boi, {image.shape[1] - 2} image tokens, eoi; --image_length is {self.image_length})"
            )
        embeddings = embeddings.clone()
        embeddings[mask] = image.reshape(-1, image.shape[-1]).to(embeddings.dtype)
        return embeddings


class GLM4VModel(ChatGLM4Model):
    """``ChatGLM4Model`` with the ``eva`` mixin. ``forward(input_ids, ..., vision_image=
    [b, 3, H, W], image_embed_mask=[b, s])``; ``image_embed_mask`` marks ``image_length + 2``
    places per row (``boi``, the image tokens, ``eoi``)."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.image_length = args.image_length
        self.add_mixin("eva", ImageMixin(args))

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("GLM4V", "GLM4V Configurations")
        group.add_argument("--image_length", type=int, default=256)
        group.add_argument("--eva_args", type=json.loads, default={})
        group.add_argument("--proj_hidden_size", type=int, default=None)
        return super().add_model_specific_args(parser)

    def forward(self, input_ids, *args, **kwargs):
        if input_ids.shape[1] == 1:  # a cached step: text only
            kwargs.pop("vision_expert_mask", None)
            kwargs.pop("image_embed_mask", None)
        return super().forward(input_ids, *args, **kwargs)
