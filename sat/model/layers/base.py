"""What every backbone module shares: how its parameters are made, and how it calls a hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sat.mpu.utils import InitMethod


@dataclass(frozen=True)
class LayerBuild:
    """How the backbone makes its modules, beyond the architecture (``TransformerConfig``).

    ``skip_init`` leaves parameters uninitialised (the caller fills them in); ``device`` is
    ``meta`` for a build whose weights a checkpoint supplies (``get_meta_model``).
    """

    hooks: dict[str, Callable]
    transformer: torch.nn.Module
    layernorm: Callable[..., torch.nn.Module]
    activation_func: Callable[[torch.Tensor], torch.Tensor]
    init_method: InitMethod
    output_layer_init_method: InitMethod
    params_dtype: torch.dtype
    skip_init: bool
    device: torch.device

    @property
    def linear_kwargs(self) -> dict:
        """The keywords every parallel linear layer of the backbone takes."""
        return dict(params_dtype=self.params_dtype, skip_init=self.skip_init, device=self.device)

    def norm(self, hidden_size: int, eps: float) -> torch.nn.Module:
        # Norm classes are user-replaceable and may take only (hidden_size, eps): choose the
        # device through the default-device context instead of a keyword.
        with self.device:
            return self.layernorm(hidden_size, eps=eps).to(self.params_dtype)


def owned_init(init_method: InitMethod, owner: torch.nn.Module, name: str) -> InitMethod:
    """``init_method`` told which module and parameter it initialises (T5-style inits use
    them). Bound here rather than passed to the layer as ``module=``: DeepSpeed ZeRO-3's
    ``zero.Init`` wraps every module constructor in a function whose first parameter is
    named ``module``, so that keyword would collide."""

    def init(tensor: torch.Tensor, **kwargs) -> torch.Tensor:
        return init_method(tensor, module=owner, name=name)

    return init


class HookedModule(torch.nn.Module):
    """A backbone module: it reads the model's shared hook table and points at its transformer."""

    def _attach(self, hooks: dict[str, Callable], transformer: torch.nn.Module) -> None:
        self.hooks = hooks
        # Not a submodule: the transformer owns this module, not the other way round.
        object.__setattr__(self, "transformer", transformer)

    def hook(self, name: str, default: Callable) -> Callable:
        """The implementation of hook ``name`` that a model or mixin installed, else ``default``."""
        installed = self.hooks.get(name)
        return default if installed is None else installed
