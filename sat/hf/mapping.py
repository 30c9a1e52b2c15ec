"""Declarative state-dict maps between ``transformers`` and sat.

A family's map is a list of entries ``(sat_key, hf_keys, transform)``:

- ``sat_key``: a sat parameter name, ``{}`` standing for the layer index; ``None`` means the HF
  keys have no sat counterpart and are dropped (buffers such as cached masks). A tuple of names
  means one HF tensor makes several sat tensors (a fused ``gate_up_proj`` -> the gate and the
  up projection, ``split``): the transform then returns, and takes back, one tensor per name.
- ``hf_keys``: one HF name or a tuple of names (several HF tensors make one sat tensor, e.g.
  ``q_proj``/``k_proj``/``v_proj`` -> ``query_key_value``); ``None`` means the sat key has no HF
  counterpart (a buffer sat recomputes, such as rotary ``inv_freq``).
- ``transform``: how tensors change on the way (``None`` = unchanged). The same entry serves
  both directions.

Every key must be accounted for: a key no entry matches, or one an entry needs but the state
dict lacks, raises with its name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

Tensors = list[torch.Tensor]


class MappingError(KeyError):
    """A state dict that does not fit the family's map; the message names the keys."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Transform:
    """A named pair of conversions: HF tensors -> sat tensor, and back.

    ``to_sat(tensors, ctx)`` and ``to_hf(tensor, ctx)`` get a context dict with the sizes they
    need (head counts, head size) from the family.
    """

    name: str
    to_sat: Callable[[Tensors, dict], torch.Tensor]
    to_hf: Callable[[torch.Tensor, dict], Tensors]


IDENTITY = Transform("identity", lambda ts, ctx: ts[0], lambda t, ctx: [t])
# GPT-2's Conv1D stores weights as [in, out]; sat's linear layers as [out, in]. The sat side
# is a transposed view: no copy, and Conv1D's memory layout, which on CPU makes the
# matrix-vector products of decoding faster (bench/README.md).
TRANSPOSE = Transform("transpose", lambda ts, ctx: ts[0].t(), lambda t, ctx: [t.t().contiguous()])


def concat(sizes: Callable[[dict], Sequence[int]], name: str = "concat") -> Transform:
    """Several HF tensors stacked along dim 0 into one sat tensor; ``sizes(ctx)`` gives each
    part's length for the way back."""
    return Transform(
        name,
        lambda ts, ctx: torch.cat(ts, dim=0),
        lambda t, ctx: [part.contiguous() for part in torch.split(t, list(sizes(ctx)), dim=0)],
    )


def tied(count: int) -> Transform:
    """One sat tensor saved under ``count`` tied HF names (an embedding that is also the head)."""
    return Transform("tied", lambda ts, ctx: ts[0], lambda t, ctx: [t] * count)


def split(sizes: Callable[[dict], Sequence[int]], name: str = "split") -> Transform:
    """One HF tensor cut along dim 0 into several sat tensors of lengths ``sizes(ctx)`` (views,
    no copy); concatenated on the way back. For an entry whose sat side is a tuple of names."""
    return Transform(
        name,
        lambda ts, ctx: list(torch.split(ts[0], list(sizes(ctx)), dim=0)),
        lambda ts, ctx: [torch.cat(ts, dim=0)],
    )


def _fill(template: str, layer: int | None) -> str:
    return template if layer is None else template.format(layer)


def _fill_sat(sat: str | tuple[str, ...], layer: int | None) -> str | tuple[str, ...]:
    return tuple(_fill(key, layer) for key in sat) if isinstance(sat, tuple) else _fill(sat, layer)


@dataclass(frozen=True)
class Entry:
    sat: str | tuple[str, ...] | None
    hf: tuple[str, ...] | None
    transform: Transform = IDENTITY

    @property
    def sat_keys(self) -> tuple[str, ...]:
        """The sat names of the entry (several for a ``split``)."""
        return () if self.sat is None else (self.sat if isinstance(self.sat, tuple) else (self.sat,))

    @property
    def fans_out(self) -> bool:
        """Whether one HF tensor makes several sat tensors."""
        return isinstance(self.sat, tuple)


@dataclass
class StateDictMap:
    """A family's map, expanded for a given number of layers (``{}`` -> 0..n-1)."""

    entries: list[Entry]
    ignore_hf: tuple[str, ...] = field(default=())  # regexes of HF keys to drop silently

    @classmethod
    def build(cls, table: Sequence[tuple], num_layers: int, ignore_hf: Sequence[str] = ()) -> StateDictMap:
        entries = []
        for row in table:
            sat, hf, transform = (tuple(row) + (None,))[:3]
            hf = (hf,) if isinstance(hf, str) else (tuple(hf) if hf is not None else None)
            transform = transform or IDENTITY
            sat_keys = (sat,) if isinstance(sat, str) else (sat or ())
            templated = any("{}" in k for k in sat_keys) or (hf is not None and any("{}" in k for k in hf))
            for layer in range(num_layers) if templated else [None]:
                entries.append(
                    Entry(
                        _fill_sat(sat, layer) if sat is not None else None,
                        tuple(_fill(k, layer) for k in hf) if hf is not None else None,
                        transform,
                    )
                )
        return cls(entries, tuple(ignore_hf))

    @property
    def sat_only(self) -> set[str]:
        """sat keys the map declares without an HF counterpart: the model keeps them as built."""
        return {key for entry in self.entries if entry.hf is None for key in entry.sat_keys}

    def _ignored(self, key: str) -> bool:
        return any(re.fullmatch(pattern, key) for pattern in self.ignore_hf)

    def hf_to_sat(self, hf_state: Mapping[str, torch.Tensor], ctx: dict) -> dict[str, torch.Tensor]:
        """Convert a ``transformers`` state dict to sat names and layouts."""
        sat_state, used = {}, set()
        for entry in self.entries:
            if entry.hf is None:
                continue
            if entry.sat is None:
                used.update(entry.hf)
                continue
            missing = [key for key in entry.hf if key not in hf_state]
            if missing:
                raise MappingError(f"the transformers state dict lacks {missing} (needed for sat key {entry.sat!r})")
            value = entry.transform.to_sat([hf_state[key] for key in entry.hf], ctx)
            sat_state.update(zip(entry.sat_keys, value if entry.fans_out else [value]))
            used.update(entry.hf)
        unmatched = [key for key in hf_state if key not in used and not self._ignored(key)]
        if unmatched:
            raise MappingError(f"transformers keys with no sat counterpart: {unmatched}")
        return sat_state

    def sat_to_hf(self, sat_state: Mapping[str, torch.Tensor], ctx: dict) -> dict[str, torch.Tensor]:
        """Convert a sat state dict to ``transformers`` names and layouts."""
        hf_state, used = {}, set()
        for entry in self.entries:
            if entry.sat is None:
                continue
            used.update(entry.sat_keys)
            if entry.hf is None:
                continue
            for key in entry.sat_keys:
                if key not in sat_state:
                    raise MappingError(f"the sat state dict lacks {key!r} (needed for {list(entry.hf)})")
            tensors = [sat_state[key] for key in entry.sat_keys]
            for key, tensor in zip(entry.hf, entry.transform.to_hf(tensors if entry.fans_out else tensors[0], ctx)):
                hf_state[key] = tensor
        unmatched = [key for key in sat_state if key not in used]
        if unmatched:
            raise MappingError(
                f"sat keys with no transformers counterpart: {unmatched} "
                "(LoRA weights? merge them first with merge_lora())"
            )
        return hf_state
