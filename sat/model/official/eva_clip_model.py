"""EVA2-CLIP's vision tower (``EVA2CLIPModel``): a ViT whose layers normalise each branch's
*output* before the residual sum (``newpost``), and which returns the final hidden states of
the patch tokens, ``[CLS]`` dropped (``final``). GLM-4V's image tower.

The original attended with xformers when the environment set ``USE_XFORMERS``; the backbone's
attention (PyTorch SDPA) computes the same, so there is no such switch here.
"""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin
from sat.model.layers import drop_path
from sat.model.official.vit_model import ViTModel


class IdentityMixin(BaseMixin):
    """``final_forward``: the final hidden states without the first (``[CLS]``) token."""

    def final_forward(self, logits, **kw_args):
        return logits[:, 1:]  # [b, s - 1, h]


class NewLayerForward(BaseMixin):
    """``layer_forward`` in EVA2-CLIP's order, each norm on its branch's output::

    x = x + input_layernorm(attn(x));  x = x + post_attention_layernorm(mlp(x))
    """

    def layer_forward(self, hidden_states, mask, *args, **kw_args):
        layer = self.transformer.layers[kw_args["layer_id"]]
        attention_output = layer.input_layernorm(layer.attention(hidden_states, mask, **kw_args))  # [b, s, h]
        hidden_states = hidden_states + self._stochastic_depth(layer, attention_output)
        mlp_output = layer.post_attention_layernorm(layer.mlp(hidden_states, **kw_args))  # [b, s, h]
        return hidden_states + self._stochastic_depth(layer, mlp_output)

    @staticmethod
    def _stochastic_depth(layer: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        """``--drop-path``, in training only."""
        if layer.training and layer.drop_path > 0.0:
            return drop_path(output, layer.drop_path)
        return output


class EVA2CLIPModel(ViTModel):
    """``patch_embedding``, ``pos_embedding`` (ViT's, with ``[CLS]`` as ``input_ids[:, :1]``),
    ``final`` and ``newpost``; GELU MLP. ``forward(input_ids, position_ids, attention_mask,
    image=[b, c, H, W])`` returns ``[b, num_patches, hidden]``. Under model parallelism its
    ``[CLS]`` table (one row, too small to split) is replicated, as CLIP's image tower's."""

    replicate_special_tokens = True

    def add_head(self, args, hidden_size: int) -> None:
        self.add_mixin("final", IdentityMixin())
        self.add_mixin("newpost", NewLayerForward())

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("EVA2CLIP", "EVA2CLIP Configurations")
        group.add_argument("--image-size", nargs="+", type=int, default=[224, 224])
        group.add_argument("--pre-len", type=int, default=1)  # [CLS]
        group.add_argument("--post-len", type=int, default=0)
        group.add_argument("--in-channels", type=int, default=3)
        group.add_argument("--patch-size", type=int, default=16)
        return parser  # not ViT's head arguments (--num-classes, --headless)
