"""``AnnealingLR``: linear warm-up, then linear, cosine, exponential or constant decay.

With ``w = warmup_iter`` and ``T = num_iters``, the learning rate at step ``n`` is::

    n <= w          start_lr * n / w                                  (warm-up)
    p = min(1, (n - w) / T)                                           (decay progress)
    linear          start_lr * (1 - p)                                (0 at the end, never below)
    cosine          start_lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)  (start_lr * r at the end)
    exponential     start_lr * r ** p                                 (start_lr * r at the end)
    constant        start_lr

where ``r = decay_ratio``. These are the original library's curves (the decay spans ``T`` steps
after the warm-up) with its two bugs fixed: linear decay no longer goes negative once ``n``
passes ``w + T``, and ``exponential`` decays instead of being constant.

"Auto warm-up" (a finetune run, or a schedule resumed without its saved state): for the first
``auto_warmup_steps`` steps after ``last_iter`` the rate is capped at
``start_lr * auto_warmup_rate``. Each optimizer group's rate is multiplied by its ``lr_scale``.
"""

from __future__ import annotations

import math

DECAY_STYLES = ("linear", "cosine", "exponential", "constant")


class AnnealingLR:
    """Sets ``group["lr"] = schedule(step) * group.get("lr_scale", 1)`` on every optimizer group.

    Args:
        optimizer: a torch optimizer or a DeepSpeed one (anything with ``param_groups``).
        start_lr: the peak learning rate.
        warmup_iter: steps of linear warm-up (may be fractional, as ``--warmup`` gives).
        num_iters: steps of decay after the warm-up.
        decay_style: one of ``linear``, ``cosine``, ``exponential``, ``constant`` (``None``: constant).
        last_iter: the last step already taken: construction applies the rate of step
            ``last_iter + 1`` (the next one to run) and every ``step()`` moves one further.
        decay_ratio: the final rate as a fraction of ``start_lr`` (cosine and exponential).
        auto_warmup_steps, auto_warmup_rate: the auto warm-up cap described above.
    """

    # Everything that determines the schedule, including the current step.
    _STATE_KEYS = (
        "start_lr",
        "warmup_iter",
        "end_iter",
        "decay_style",
        "decay_ratio",
        "init_step",
        "auto_warmup_steps",
        "auto_warmup_rate",
        "num_iters",
    )

    def __init__(
        self,
        optimizer,
        start_lr: float,
        warmup_iter: float,
        num_iters: int,
        decay_style: str | None = None,
        last_iter: int = -1,
        decay_ratio: float = 0.5,
        auto_warmup_steps: int = 50,
        auto_warmup_rate: float = 0.05,
    ):
        style = (decay_style or "constant").lower()
        if style == "none":
            style = "constant"
        if style not in DECAY_STYLES:
            raise ValueError(f"decay_style must be one of {DECAY_STYLES}, got {decay_style!r}")
        if num_iters <= 0:
            raise ValueError(f"num_iters must be positive, got {num_iters}")
        if not 0 <= warmup_iter <= num_iters:
            raise ValueError(f"warmup_iter must be within [0, num_iters={num_iters}], got {warmup_iter}")
        if style in ("cosine", "exponential") and not 0 < decay_ratio <= 1:
            raise ValueError(f"decay_ratio must be in (0, 1] for {style} decay, got {decay_ratio}")
        self.optimizer = optimizer
        self.start_lr = float(start_lr)
        self.warmup_iter = warmup_iter
        self.end_iter = num_iters
        self.decay_style = style
        self.decay_ratio = float(decay_ratio)
        self.init_step = last_iter
        self.auto_warmup_steps = auto_warmup_steps
        self.auto_warmup_rate = auto_warmup_rate
        self.num_iters = last_iter + 1
        self._apply()

    def get_lr(self) -> float:
        """The unscaled learning rate of the current step ``self.num_iters``."""
        lr = self._scheduled_lr(self.num_iters)
        if self.num_iters <= self.init_step + self.auto_warmup_steps:
            lr = min(lr, self.start_lr * self.auto_warmup_rate)
        return lr

    def _scheduled_lr(self, n: int) -> float:
        if self.warmup_iter > 0 and n <= self.warmup_iter:
            return self.start_lr * n / self.warmup_iter
        progress = min(1.0, max(0.0, (n - self.warmup_iter) / self.end_iter))
        if self.decay_style == "linear":
            return self.start_lr * (1.0 - progress)
        if self.decay_style == "cosine":
            ratio = self.decay_ratio
            return self.start_lr * (ratio + (1.0 - ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0)
        if self.decay_style == "exponential":
            return self.start_lr * self.decay_ratio**progress
        return self.start_lr

    def step(self, step_num: int | None = None) -> None:
        """Move to ``step_num`` (default: the next step) and set the groups' rates."""
        self.num_iters = self.num_iters + 1 if step_num is None else step_num
        self._apply()

    def _apply(self) -> None:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def get_last_lr(self) -> list[float]:
        """The current rate of every optimizer group (as torch schedulers report it)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Everything that determines the schedule, including the current step."""
        return {key: getattr(self, key) for key in self._STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` left off (and set the groups' rates)."""
        missing = [key for key in self._STATE_KEYS if key not in state]
        if missing:
            raise KeyError(f"AnnealingLR state lacks {missing}")
        for key in self._STATE_KEYS:
            setattr(self, key, state[key])
        self._apply()


def get_learning_rate_scheduler(
    optimizer, iteration: int, args, auto_warmup_steps: int = 100, auto_warmup_rate: float = 0.05
) -> AnnealingLR:
    """The schedule ``args`` describe (``--lr``, ``--warmup``, ``--lr-decay-*``), positioned at
    ``iteration``. A finetune run caps its first ``auto_warmup_steps`` steps (the original's
    behaviour); a pretraining run starts plain, and a resumed one then loads its saved state."""
    num_iters = max(1, args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters)
    if args.mode == "pretrain":
        auto_warmup_steps = 0
    return AnnealingLR(
        optimizer,
        start_lr=args.lr,
        warmup_iter=args.warmup * num_iters,
        num_iters=num_iters,
        decay_style=args.lr_decay_style,
        last_iter=iteration,
        decay_ratio=args.lr_decay_ratio,
        auto_warmup_steps=auto_warmup_steps,
        auto_warmup_rate=auto_warmup_rate,
    )
