"""``FusedEmaAdam``: Adam(W) that also keeps an exponential moving average (EMA) of the weights.

The original compiled a CUDA kernel fusing the Adam update with the EMA update. Here the Adam
step is torch's own (``torch.optim.Adam``, foreach or fused as torch chooses), and the EMA is
one foreach ``lerp`` over the updated weights, so it runs on any device without a build step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class FusedEmaAdam(torch.optim.Adam):
    """Adam, with decoupled weight decay (AdamW) unless ``adam_w_mode=False`` (then L2), plus
    ``state[p]["shadow"]``: after each step, ``shadow = d * shadow + (1 - d) * p``, starting
    from the weights before the first step. ``d`` is ``ema_decay``, or with
    ``use_num_upates`` (the original's spelling) ``min(ema_decay, (1 + n) / (10 + n))`` at
    update ``n`` (counting from 1), so early averages forget their random start quickly.

    ``copy_to()`` writes the averages into the weights; ``store(params)`` and
    ``restore(params)`` keep and bring back the trained weights around that (evaluating or
    saving the EMA model).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adam_w_mode: bool = True,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        set_grad_none: bool = True,
        ema_decay: float = 0.9999,
        use_num_upates: bool = True,
        **torch_adam_kwargs,
    ):
        if amsgrad:
            raise ValueError("FusedEmaAdam does not support the AMSGrad variant")
        if not bias_correction:
            raise ValueError("FusedEmaAdam(bias_correction=False) is not supported: torch's Adam always corrects")
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=adam_w_mode,
            **torch_adam_kwargs,
        )
        self.adam_w_mode = adam_w_mode
        self.set_grad_none = set_grad_none
        self.ema_decay = ema_decay
        # -1: a constant decay; otherwise the number of updates made (the original's attribute).
        self.num_updates = 0 if use_num_upates else -1
        self.collected_params: list[torch.Tensor] = []

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    def current_decay(self) -> float:
        """The decay the next ``step`` applies (advancing the update count is ``step``'s job)."""
        if self.num_updates < 0:
            return self.ema_decay
        n = self.num_updates + 1
        return min(self.ema_decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def step(self, closure=None):
        stepped = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        # The average starts from the weights before their first update, as the original's did.
        starts = {p: p.detach().clone() for p in stepped if "shadow" not in self.state[p]}
        decay = self.current_decay()
        loss = super().step(closure)
        if self.num_updates >= 0:
            self.num_updates += 1
        for p, start in starts.items():
            self.state[p]["shadow"] = start
        if stepped:
            shadows = [self.state[p]["shadow"] for p in stepped]
            torch._foreach_lerp_(shadows, [p.detach() for p in stepped], 1.0 - decay)  # d * s + (1 - d) * p
        return loss

    def state_dict(self) -> dict:
        """torch's optimizer state plus ``num_updates``, so a resumed run continues the warm-up of
        the decay instead of restarting it (the original kept the count out of its state)."""
        state = super().state_dict()
        state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what ``state_dict`` returned; a state without ``num_updates`` (saved by plain
        ``torch.optim.Adam``) keeps the current count."""
        state_dict = dict(state_dict)
        num_updates = state_dict.pop("num_updates", None)
        super().load_state_dict(state_dict)
        if num_updates is not None:
            self.num_updates = int(num_updates)

    def copy_to(self) -> None:
        """Write every trainable parameter's EMA into the parameter."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and "shadow" in self.state[p]:
                    p.data.copy_(self.state[p]["shadow"])

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of ``parameters`` for ``restore`` (call before ``copy_to``)."""
        self.collected_params = [param.detach().clone() for param in parameters]

    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the copies ``store`` kept."""
        for stored, param in zip(self.collected_params, parameters, strict=True):
            param.data.copy_(stored)
