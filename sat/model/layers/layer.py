"""One transformer layer: norms, attention, optional cross-attention, MLP, residuals."""

from __future__ import annotations

import torch

from sat.config import TransformerConfig
from sat.model.layers.attention import CrossAttention, SelfAttention
from sat.model.layers.base import HookedModule, LayerBuild
from sat.model.layers.mlp import MLP


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth: drop the whole branch for a sample with probability ``p``."""
    keep = (torch.rand(x.shape[0], dtype=x.dtype, device=x.device) + (1 - p)).floor_() / (1 - p)
    return x * keep.view(-1, *([1] * (x.dim() - 1)))


class BaseTransformerLayer(HookedModule):
    """``input_layernorm``, ``attention``, ``post_attention_layernorm``, ``mlp``; plus
    ``third_layernorm``/``fourth_layernorm`` for the sandwich order and ``cross_attention`` with
    ``post_cross_attention_layernorm`` in decoder layers. The parallel order has one norm only,
    no ``post_attention_layernorm``."""

    def __init__(self, config: TransformerConfig, layer_id: int, build: LayerBuild):
        super().__init__()
        self._attach(build.hooks, build.transformer)
        self.layer_id = layer_id
        self.is_decoder = config.is_decoder_layer(layer_id)
        self.layernorm_order = config.layernorm_order
        self.drop_path = config.drop_path
        self.residual_scale = config.residual_scale

        def norm() -> torch.nn.Module:
            return build.norm(config.hidden_size, config.layernorm_epsilon)

        self.input_layernorm = norm()
        self.attention = SelfAttention(config, layer_id, build)
        if self.layernorm_order != "parallel":
            self.post_attention_layernorm = norm()
        if self.layernorm_order == "sandwich":
            self.third_layernorm = norm()
            self.fourth_layernorm = norm()
        if self.is_decoder:
            self.cross_attention = CrossAttention(config, layer_id, build)
            self.post_cross_attention_layernorm = norm()
        self.mlp = MLP(config, layer_id, build)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
        return self.hook("layer_forward", self.default_forward)(hidden_states, mask, *args, **kw_args)

    def default_forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, *args, **kw_args) -> torch.Tensor:
        """The default ``layer_forward``: ``[b, s, h]`` -> ``[b, s, h]``, in one of four orders
        (``ln`` = norm; decoder layers put cross-attention ``xattn`` between the two blocks)::

            pre:       x = x + attn(ln(x));            x = x + mlp(ln(x))
            sandwich:  x = x + ln(attn(ln(x)));        x = x + ln(mlp(ln(x)))
            post:      y = ln(x); y = ln(a y + attn(y)); out = a y + mlp(y)   (a = residual_scale, default 1)
            parallel:  y = ln(x); out = x + attn(y) + mlp(y)   (GPT-J; one norm, no decoder)
        """
        post = self.layernorm_order == "post"
        attention_input = self.input_layernorm(hidden_states)
        attention_output = self._branch(self.attention(attention_input, mask, **kw_args), "third_layernorm")
        if self.layernorm_order == "parallel":  # both branches read the same normed input
            mlp_output = self._branch(self.mlp(attention_input, **kw_args), "fourth_layernorm")
            return hidden_states + attention_output + mlp_output
        if post:
            mlp_input = self.post_attention_layernorm(self._scaled(attention_input) + attention_output)
        else:
            hidden_states = hidden_states + attention_output

        if self.is_decoder and kw_args.get("encoder_outputs") is not None:
            if post:
                mlp_input = self.post_cross_attention_layernorm(mlp_input + self.cross_attention(mlp_input, **kw_args))
            else:
                cross_input = self.post_cross_attention_layernorm(hidden_states)
                hidden_states = hidden_states + self.cross_attention(cross_input, **kw_args)

        if not post:
            mlp_input = self.post_attention_layernorm(hidden_states)
        mlp_output = self._branch(self.mlp(mlp_input, **kw_args), "fourth_layernorm")
        return (self._scaled(mlp_input) if post else hidden_states) + mlp_output

    def _scaled(self, residual: torch.Tensor) -> torch.Tensor:
        """The post order's residual times ``residual_scale`` (skipped at 1, the default)."""
        return residual if self.residual_scale == 1.0 else residual * self.residual_scale

    def _branch(self, output: torch.Tensor, sandwich_norm: str) -> torch.Tensor:
        """A residual branch's output after its sandwich norm and stochastic depth."""
        if self.layernorm_order == "sandwich":
            output = getattr(self, sandwich_norm)(output)
        if self.training and self.drop_path > 0.0:
            output = drop_path(output, self.drop_path)
        return output
