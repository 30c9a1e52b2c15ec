"""Weight-only quantization arithmetic: per-output-channel absmax scales, 8-bit integers, and
two 4-bit integers packed into one byte.

A weight ``W [out, in]`` becomes ``q = round(W / s)`` with ``s [out] = max_j |W[:, j]| / qmax``
(``qmax`` 127 for 8 bits, 7 for 4), so each element is off by at most ``s / 2``. Storage is
``int8``: ``[out, in]`` for 8 bits, ``[out, in / 2]`` for 4 bits with column ``2k`` in the low
nibble and ``2k + 1`` in the high one (both signed).
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (8, 4)


def max_level(bits: int) -> int:
    """The largest integer a ``bits``-bit weight holds (levels are symmetric around 0)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"weight_bit_width must be one of {SUPPORTED_BITS}, got {bits}")
    return 2 ** (bits - 1) - 1


def absmax_scale(absmax: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The scale ``[out]`` for rows whose largest magnitude is ``absmax [out]``. An all-zero row
    gets scale 1 rather than 0, so quantizing it divides by a non-zero number (its integers are 0)."""
    scale = absmax.float() / max_level(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale)).to(dtype)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight [out, in]`` as integers on ``scale [out]``: ``int8 [out, in * bits / 8]``."""
    level = max_level(bits)
    # float32 division: rounding a half-precision quotient could move a value by one level.
    q = torch.round(weight.float() / scale.float()[:, None]).clamp_(-level, level).to(torch.int8)  # [out, in]
    return q if bits == 8 else pack_int4(q)


def dequantize_weight(qweight: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense ``[out, in]`` weight in ``dtype`` from ``quantize_weight``'s integers and ``scale``."""
    q = qweight if bits == 8 else unpack_int4(qweight)  # int8 [out, in]
    return q.to(dtype) * scale.to(dtype)[:, None]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 ``[..., n]`` with values in [-8, 7] -> int8 ``[..., n / 2]`` (low nibble: even columns)."""
    if q.shape[-1] % 2:
        raise ValueError(f"4-bit packing stores two input columns per byte; the input size {q.shape[-1]} is odd")
    low, high = q[..., 0::2], q[..., 1::2]  # [..., n / 2] each
    return (high << 4) | (low & 0x0F)  # int8 shifts wrap, so the high nibble carries the sign bit


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 ``[..., n / 2]`` -> int8 ``[..., n]``."""
    high = packed >> 4  # arithmetic shift: the signed high nibble
    low = (packed << 4) >> 4  # the low nibble moved up and back down, sign-extended
    return torch.stack((low, high), dim=-1).flatten(-2)  # [..., n / 2, 2] -> [..., n]
