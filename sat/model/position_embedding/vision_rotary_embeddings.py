"""EVA-02's 2-D rotary embeddings for image patches: the first half of the rotated channels
turns with the patch row, the second with its column, in the pair layout (``rotate_interleaved``).

``freqs_cos``/``freqs_sin`` are persistent buffers, as in the original's checkpoints.
"""

from __future__ import annotations

import math

import torch

from sat.model.position_embedding.rotary import rotate_interleaved


def _frequencies(dim: int, custom_freqs, freqs_for: str, theta: float, max_freq: float, num_freqs: int):
    if custom_freqs is not None:
        return torch.as_tensor(custom_freqs, dtype=torch.float32)
    if freqs_for == "lang":
        return 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    if freqs_for == "pixel":
        return torch.linspace(1.0, max_freq / 2, dim // 2) * math.pi
    if freqs_for == "constant":
        return torch.ones(num_freqs)
    raise ValueError(f"freqs_for must be 'lang', 'pixel' or 'constant', got {freqs_for!r}")


def _grid_angles(dim, pt_seq_len, ft_seq_len, custom_freqs, freqs_for, theta, max_freq, num_freqs) -> torch.Tensor:
    """``[H, W, 2 f]`` angles, each frequency twice in a row (pair layout): row angles first,
    then column angles; a fine-tuning grid ``ft_seq_len`` is stretched onto ``pt_seq_len``."""
    freqs = _frequencies(dim, custom_freqs, freqs_for, theta, max_freq, num_freqs)  # [f]
    ft_seq_len = pt_seq_len if ft_seq_len is None else ft_seq_len
    t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len  # [n]
    angles = (t[:, None] * freqs).repeat_interleave(2, dim=-1)  # [n, 2 f]
    n = angles.shape[0]
    return torch.cat((angles[:, None, :].expand(n, n, -1), angles[None, :, :].expand(n, n, -1)), dim=-1)


class VisionRotaryEmbedding(torch.nn.Module):
    """Rotate ``t [..., H, W, C]`` in channels ``start_index .. start_index + 2 dim``."""

    def __init__(
        self,
        dim: int,
        pt_seq_len: int,
        ft_seq_len: int | None = None,
        custom_freqs=None,
        freqs_for: str = "lang",
        theta: float = 10000,
        max_freq: float = 10,
        num_freqs: int = 1,
    ):
        super().__init__()
        angles = _grid_angles(dim, pt_seq_len, ft_seq_len, custom_freqs, freqs_for, theta, max_freq, num_freqs)
        self.register_buffer("freqs_cos", angles.cos())  # [H, W, rot]
        self.register_buffer("freqs_sin", angles.sin())

    def forward(self, t: torch.Tensor, start_index: int = 0) -> torch.Tensor:
        rot = self.freqs_cos.shape[-1]
        if start_index + rot > t.shape[-1]:
            raise ValueError(f"{t.shape[-1]} channels cannot hold {rot} rotated channels from {start_index}")
        # each pair's angle once: the buffers repeat it for both channels of the pair
        cos, sin = self.freqs_cos[..., ::2], self.freqs_sin[..., ::2]
        rotated = rotate_interleaved(t[..., start_index:], cos, sin)
        return torch.cat((t[..., :start_index], rotated), dim=-1)


class VisionRotaryEmbeddingFast(torch.nn.Module):
    """Rotate all channels of ``t [..., H*W, 2 dim]`` (the grid flattened row-major)."""

    def __init__(
        self,
        dim: int,
        pt_seq_len: int = 16,
        ft_seq_len: int | None = None,
        custom_freqs=None,
        freqs_for: str = "lang",
        theta: float = 10000,
        max_freq: float = 10,
        num_freqs: int = 1,
    ):
        super().__init__()
        angles = _grid_angles(dim, pt_seq_len, ft_seq_len, custom_freqs, freqs_for, theta, max_freq, num_freqs)
        angles = angles.flatten(0, 1)  # [H*W, rot]
        self.register_buffer("freqs_cos", angles.cos())
        self.register_buffer("freqs_sin", angles.sin())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return rotate_interleaved(t, self.freqs_cos[..., ::2], self.freqs_sin[..., ::2])
