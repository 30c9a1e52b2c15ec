"""The key/value cache for autoregressive decoding, as a mixin that works on any model.

``CachedAutoregressiveMixin`` wraps ``attention_fn`` (``@non_conflict``) and prepends the keys
and values of earlier positions. Add it after other attention mixins (prefix tuning...) so it is
the outermost wrapper: the cache then holds the model's own keys and values only.

Two forms of ``mems`` are accepted:

- a ``KVCache`` (what ``filling_sequence`` uses): preallocated per-layer buffers written in
  place, so a decoding step copies only the new keys and values, never the whole cache;
- the original library's form, a tensor or list indexed by layer of packed ``[b, mem, 2 * nkv * hn]``
  keys and values, with each layer's new ones returned as ``output_this_layer['mem_kv']``
  (see ``update_mems``). This copies the cache at every step and is kept for user code.
"""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin, BaseModel
from sat.model.layers import attention_fn_default
from sat.ops.attention import CAUSAL, attention_mask_kind, causal_attention_mask


class KVCache:
    """Per-layer key and value buffers ``[b, nkv, capacity, hn]``, filled in place.

    ``update(layer_id, k, v)`` appends a step's keys/values and returns views of everything
    cached so far for that layer. Buffers grow by doubling when ``capacity`` is exceeded.
    """

    def __init__(self, num_layers: int, capacity: int = 0):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        self.capacity = capacity

    @property
    def length(self) -> int:
        """Number of cached positions (of layer 0)."""
        return self.lengths[0]

    @property
    def batch_size(self) -> int | None:
        return None if self.keys[0] is None else self.keys[0].shape[0]

    def _buffer(self, layer_id: int, like: torch.Tensor, needed: int) -> None:
        current = self.keys[layer_id]
        if current is not None and current.shape[2] >= needed:
            return
        size = max(needed, self.capacity, 2 * (current.shape[2] if current is not None else 0))
        b, h, _, d = like.shape
        keys = like.new_empty(b, h, size, d)
        values = like.new_empty(b, h, size, d)
        if current is not None:
            filled = self.lengths[layer_id]
            keys[:, :, :filled] = current[:, :, :filled]
            values[:, :, :filled] = self.values[layer_id][:, :, :filled]
        self.keys[layer_id], self.values[layer_id] = keys, values

    def update(self, layer_id: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key``/``value`` ``[b, nkv, s, hn]``; return the layer's cached ``[b, nkv, mem + s, hn]``."""
        start = self.lengths[layer_id]
        end = start + key.shape[2]
        self._buffer(layer_id, key, end)
        self.keys[layer_id][:, :, start:end] = key
        self.values[layer_id][:, :, start:end] = value
        self.lengths[layer_id] = end
        return self.keys[layer_id][:, :, :end], self.values[layer_id][:, :, :end]

    def expand_batch(self, batch_size: int) -> None:
        """Repeat a batch-1 cache (one prompt) for ``batch_size`` samples."""
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):
            if keys is not None and keys.shape[0] != batch_size:
                self.keys[i] = keys.expand(batch_size, *keys.shape[1:]).contiguous()
                self.values[i] = values.expand(batch_size, *values.shape[1:]).contiguous()

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep batch rows ``indices`` (beam search picks which beams continue)."""
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):
            if keys is not None:
                self.keys[i] = keys.index_select(0, indices)
                self.values[i] = values.index_select(0, indices)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        self.lengths = [min(n, length) for n in self.lengths]


def _pack(key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # [b, nkv, s, hn] x 2 -> [b, s, 2 * nkv * hn], the original library's mem_kv layout
    b, h, s, d = key.shape
    return torch.cat((key.transpose(1, 2).reshape(b, s, h * d), value.transpose(1, 2).reshape(b, s, h * d)), dim=-1)


def _unpack(packed: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, s, width = packed.shape
    key, value = packed.split(width // 2, dim=-1)
    return (
        key.reshape(b, s, heads, -1).transpose(1, 2),
        value.reshape(b, s, heads, -1).transpose(1, 2),
    )


class CachedAutoregressiveMixin(BaseMixin):
    """KV cache for any model: pass ``mems=`` (a ``KVCache``, or the original's packed form) to
    ``model(...)``; only the new tokens need to be given."""

    @BaseMixin.non_conflict
    def attention_fn(
        self, q, k, v, mask, dropout_fn, mems=None, cross_attention=False, old_impl=attention_fn_default, **kw_args
    ):
        if cross_attention:
            kw_args["output_this_layer"]["mem_cross"] = (k, v)
            if k.shape[0] != q.shape[0]:  # one encoder output for several samples
                k = k.expand(q.shape[0], *k.shape[1:])
                v = v.expand(q.shape[0], *v.shape[1:])
            return old_impl(q, k, v, mask, dropout_fn, cross_attention=True, mems=mems, **kw_args)

        layer_id = kw_args["layer_id"]
        new_length = q.shape[2]
        if isinstance(mems, KVCache):
            k, v = mems.update(layer_id, k, v)
        else:
            kw_args["output_this_layer"]["mem_kv"] = _pack(k, v)
            if mems is not None and len(mems) > layer_id and mems[layer_id].shape[1] > 0:
                past_k, past_v = _unpack(mems[layer_id], k.shape[1])
                if past_k.shape[0] != k.shape[0]:
                    past_k = past_k.expand(k.shape[0], *past_k.shape[1:])
                    past_v = past_v.expand(k.shape[0], *past_v.shape[1:])
                k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        if attention_mask_kind(mask) == CAUSAL and mask.shape[-1] != k.shape[2] and new_length > 1:
            # The backbone's causal mask covers the new tokens only: widen it to the cached keys
            # (one new token sees every key: its [1, 1] mask broadcasts as it is).
            mask = causal_attention_mask(new_length, mask.dtype, mask.device, key_length=k.shape[2])
        return old_impl(q, k, v, mask, dropout_fn, mems=mems, **kw_args)


class CachedAutoregressiveModel(BaseModel):
    """A ``BaseModel`` with the cache mixin added as ``auto-regressive``."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.add_mixin("auto-regressive", CachedAutoregressiveMixin())
