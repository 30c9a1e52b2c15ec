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
    update ``n`` of the parameter's group (counting from 1), so early averages forget their random start quickly.

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
        # Each group counts its own updates (-1: a constant decay): DeepSpeed's ZeRO-1/2 step one
        # group at a time, and as a group entry the count is in state_dict(), so a resumed run
        # continues the warm-up of the decay.
        self.defaults["num_updates"] = 0 if use_num_upates else -1
        for group in self.param_groups:
            group["num_updates"] = self.defaults["num_updates"]
        self.collected_params: list[torch.Tensor] = []

    @property
    def num_updates(self) -> int:
        """The updates made so far (the first group's count; -1 with a constant decay), the
        original's attribute; setting it sets every group's."""
        return self.param_groups[0]["num_updates"]

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        for group in self.param_groups:
            group["num_updates"] = value

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    def current_decay(self, group: dict | None = None) -> float:
        """The decay the next ``step`` applies to ``group`` (default: the first); advancing the
        count is ``step``'s job."""
        count = (group or self.param_groups[0])["num_updates"]
        if count < 0:
            return self.ema_decay
        n = count + 1
        return min(self.ema_decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def step(self, closure=None):
        stepped = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        stepped = [(group, params) for group, params in stepped if params]
        # The average starts from the weights before their first update, as the original's did.
        starts = {p: p.detach().clone() for _, params in stepped for p in params if "shadow" not in self.state[p]}
        decays = [self.current_decay(group) for group, _ in stepped]
        loss = super().step(closure)
        for p, start in starts.items():
            self.state[p]["shadow"] = start
        for (group, params), decay in zip(stepped, decays):
            if group["num_updates"] >= 0:
                group["num_updates"] += 1
            shadows = [self.state[p]["shadow"] for p in params]
            torch._foreach_lerp_(shadows, [p.detach() for p in params], 1.0 - decay)  # d * s + (1 - d) * p
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what ``state_dict`` returned, update counts included; groups saved without one
        (by plain ``torch.optim.Adam``) keep their current count."""
        counts = [group["num_updates"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, count in zip(self.param_groups, counts):
            group.setdefault("num_updates", count)

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
