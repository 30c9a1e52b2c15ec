"""A small MLP that replaces the model's ``final_forward`` (classification/regression heads)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sat.model.base_model import BaseMixin


class MLPHeadMixin(BaseMixin):
    """Maps the final hidden states through ``Linear -> act -> Linear ...`` to ``output_sizes[-1]``.

    Add it in place of the LM head (``model.del_mixin('...-final')`` first, or build the model
    headless): ``final_forward`` has no ``non_conflict`` chaining. Its layers are replicated on
    every model-parallel rank; the input hidden states are replicated too, so no communication is
    needed.
    """

    def __init__(
        self,
        hidden_size: int,
        *output_sizes: int,
        bias: bool = True,
        activation_func: Callable[[torch.Tensor], torch.Tensor] = F.relu,
        init_mean: float = 0.0,
        init_std: float = 0.005,
    ):
        super().__init__()
        if not output_sizes:
            raise ValueError("MLPHeadMixin needs at least one output size after hidden_size")
        self.activation_func = activation_func
        sizes = (hidden_size, *output_sizes)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(size_in, size_out, bias=bias) for size_in, size_out in zip(sizes[:-1], sizes[1:])
        )
        for layer in self.layers:
            torch.nn.init.normal_(layer.weight, mean=init_mean, std=init_std)

    def final_forward(self, logits: torch.Tensor, **kw_args) -> torch.Tensor:
        # logits: [b, s, hidden] final hidden states -> [b, s, output_sizes[-1]]
        for index, layer in enumerate(self.layers):
            if index > 0:
                logits = self.activation_func(logits)
            logits = layer(logits)
        return logits
