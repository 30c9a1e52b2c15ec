"""Declarative state-dict maps between ``transformers`` and sat.

A family's map is a list of entries ``(sat_key, hf_keys, transform)``:

- ``sat_key``: a sat parameter name, ``{}`` standing for the layer index; ``None`` means the HF
  keys have no sat counterpart and are dropped (buffers such as cached masks).
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


def _fill(template: str, layer: int | None) -> str:
    return template if layer is None else template.format(layer)


@dataclass(frozen=True)
class Entry:
    sat: str | None
    hf: tuple[str, ...] | None
    transform: Transform = IDENTITY


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
            templated = (sat is not None and "{}" in sat) or (hf is not None and any("{}" in k for k in hf))
            for layer in range(num_layers) if templated else [None]:
                entries.append(
                    Entry(
                        _fill(sat, layer) if sat is not None else None,
                        tuple(_fill(k, layer) for k in hf) if hf is not None else None,
                        transform,
                    )
                )
        return cls(entries, tuple(ignore_hf))

    @property
    def sat_only(self) -> set[str]:
        """sat keys the map declares without an HF counterpart: the model keeps them as built."""
        return {entry.sat for entry in self.entries if entry.hf is None and entry.sat is not None}

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
            sat_state[entry.sat] = entry.transform.to_sat([hf_state[key] for key in entry.hf], ctx)
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
            used.add(entry.sat)
            if entry.hf is None:
                continue
            if entry.sat not in sat_state:
                raise MappingError(f"the sat state dict lacks {entry.sat!r} (needed for {list(entry.hf)})")
            for key, tensor in zip(entry.hf, entry.transform.to_hf(sat_state[entry.sat], ctx)):
                hf_state[key] = tensor
        unmatched = [key for key in sat_state if key not in used]
        if unmatched:
            raise MappingError(
                f"sat keys with no transformers counterpart: {unmatched} "
                "(LoRA weights? merge them first with merge_lora())"
            )
        return hf_state
