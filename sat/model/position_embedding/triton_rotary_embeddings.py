"""``FastRotaryEmbedding``, the original's path and interface, in plain PyTorch (no triton).

It is the backbone's ``RotaryEmbedding`` (which also has the GPT-J/ChatGLM pair layout,
``interleaved``) plus the original's frequency ``shift`` and argument names.
"""

from __future__ import annotations

import torch

from sat.model.position_embedding.rotary import RotaryEmbedding


class FastRotaryEmbedding(RotaryEmbedding):
    """RoPE over the first ``dim`` channels of each head.

    ``interleaved``: rotate channel pairs ``(2i, 2i + 1)`` (GPT-J, ChatGLM) instead of
    ``(i, i + dim / 2)`` (GPT-NeoX, LLaMA). ``shift`` starts the frequency exponents at
    ``shift / dim``. Positions are always taken in fp32 (``pos_idx_in_fp32=False``, the
    original's low-precision legacy mode, is not offered); XPos (``scale_base``) is not supported.
    """

    def __init__(
        self,
        dim: int,
        base: float = 10000,
        interleaved: bool = False,
        scale_base: float | None = None,
        pos_idx_in_fp32: bool = True,
        device: torch.device | str | None = None,
        shift: int = 0,
    ):
        if scale_base is not None:
            raise NotImplementedError("FastRotaryEmbedding: XPos (scale_base) is not supported")
        if not pos_idx_in_fp32:
            raise NotImplementedError("FastRotaryEmbedding takes positions in fp32 only (pos_idx_in_fp32=True)")
        self.shift = shift  # read by _inv_freq, which the base constructor calls
        super().__init__(dim, base=base, device=device, interleaved=interleaved)

    def _inv_freq(self, device=None) -> torch.Tensor:
        exponents = torch.arange(self.shift, self.shift + self.dim, 2, dtype=torch.float32, device=device)
        return 1.0 / (self.base ** (exponents / self.dim))  # [dim / 2]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        position_id: torch.Tensor,
        max_seqlen: int | None = None,
        layer_id: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q [b, np, s, hn]`` and ``k [b, nkv, s, hn]`` by ``position_id [b or 1, s]``.

        Returns new tensors (the original rotated in place and returned its inputs);
        ``max_seqlen`` and ``layer_id`` are accepted for compatibility and not needed.
        """
        return super().forward(q, k, position_id)
