"""Learned prompts: prefix tuning (P-tuning v2) at every layer's attention, and prompt tuning
(learned virtual tokens) at the input."""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin
from sat.model.layers import attention_fn_default
from sat.mpu import get_model_parallel_rank, get_model_parallel_world_size
from sat.mpu.partition import mark_partitioned
from sat.ops.attention import CAUSAL, FULL, attention_mask_kind, causal_attention_mask, expand_kv_heads


class PrefixTuningMixin(BaseMixin):
    """Prefix tuning / P-tuning v2: ``prefix_len`` learned keys and values per layer, which every
    query of the layer's self-attention may attend to.

    ``prefix[layer_id]`` is ``[2, num_attention_heads, prefix_len, hn]`` (keys, values), the
    original library's parameter (``num_attention_heads / mp`` on each of ``mp`` model-parallel
    ranks). With grouped-query attention (``nkv`` key/value heads for
    ``np`` query heads) ``num_attention_heads`` may be either:

    - ``nkv``: the prefix is one more block of keys/values shared by each group of query heads,
      as the model's own keys are (fewer parameters, the usual choice);
    - ``np``: one prefix per query head; the layer's keys and values are then expanded to ``np``
      heads before the prefix is added, so attention runs ungrouped.

    The prefix goes before the layer's keys. Masks: full attention stays full (SDPA still runs);
    a causal mask becomes a causal mask over ``prefix + keys`` (every query sees the whole
    prefix; SDPA still runs); any other mask gets ``prefix_len`` columns of ones in front (the
    eager path). Cross-attention is left alone. Add the KV cache after this mixin: the cache
    then holds the model's own keys only and the prefix is added afresh at every step.
    """

    def __init__(self, num_layers: int, hidden_size_per_attention_head: int, num_attention_heads: int, prefix_len: int):
        super().__init__()
        # With model parallelism each rank keeps the prefix of its own heads (split like the
        # attention heads), drawn from the full prefix: the same model at any model-parallel size.
        world_size, rank = get_model_parallel_world_size(), get_model_parallel_rank()
        shape = (2, num_attention_heads, prefix_len, hidden_size_per_attention_head)
        self.prefix = torch.nn.ParameterList(
            mark_partitioned(torch.nn.Parameter((torch.randn(shape) * 0.01).chunk(world_size, dim=1)[rank]), dim=1)
            for _ in range(num_layers)
        )
        self.prefix_len = prefix_len

    @BaseMixin.non_conflict
    def attention_fn(
        self, q, k, v, mask, dropout_fn, old_impl=attention_fn_default, cross_attention=False, **kw_args
    ) -> torch.Tensor:
        if cross_attention:
            return old_impl(q, k, v, mask, dropout_fn, cross_attention=True, **kw_args)
        prefix = self.prefix[kw_args["layer_id"]].to(k.dtype)  # [2, heads, p, hn]
        heads = prefix.shape[1]
        if heads != k.shape[1]:
            if heads != q.shape[1]:
                raise ValueError(
                    f"PrefixTuningMixin has {heads} heads per layer (per model-parallel rank), but layer "
                    f"{kw_args['layer_id']} has {q.shape[1]} query and {k.shape[1]} key/value heads; use one of those"
                )
            k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
        batch, _, key_length, head_size = k.shape
        prefix_k, prefix_v = prefix[:, None].expand(2, batch, heads, self.prefix_len, head_size)
        k = torch.cat((prefix_k, k), dim=2)  # [b, nkv, p + sk, hn]
        v = torch.cat((prefix_v, v), dim=2)
        return old_impl(q, k, v, self._extend_mask(mask, q.shape[2], key_length), dropout_fn, **kw_args)

    def _extend_mask(self, mask: torch.Tensor, query_length: int, key_length: int) -> torch.Tensor:
        kind = attention_mask_kind(mask)
        if kind == FULL:
            return mask
        if kind == CAUSAL:
            return causal_attention_mask(query_length, mask.dtype, mask.device, key_length=self.prefix_len + key_length)
        mask = mask.expand(*mask.shape[:-1], key_length)  # a mask may broadcast over keys
        ones = mask.new_ones(*mask.shape[:-1], self.prefix_len)
        return torch.cat((ones, mask), dim=-1)  # [..., sq, p + sk]


PTuningV2Mixin = PrefixTuningMixin


class PromptTuningMixin(BaseMixin):
    """Prompt tuning: ``prompt_len`` learned input embeddings (virtual tokens).

    Contract: virtual token ``i`` is written in ``input_ids`` as the id ``vocab_size + i`` (see
    ``virtual_token_ids``), wherever the prompt should go, usually first. The virtual tokens are
    ordinary positions otherwise: ``position_ids``, the attention mask and the outputs cover them
    like real tokens (leave them out of the loss). So the prompt works unchanged with padding,
    batches and the KV cache (it is part of the first decoding step). Their embedding replaces
    whatever the embedding hooks before this one compute at those positions.
    """

    def __init__(self, prompt_len: int, hidden_size: int):
        super().__init__()
        self.prompt = torch.nn.Parameter(torch.randn(prompt_len, hidden_size) * 0.02)

    @property
    def vocab_size(self) -> int:
        return self.transformer.word_embeddings.num_embeddings

    def virtual_token_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The ``prompt_len`` ids that stand for the virtual tokens: ``vocab_size + i``."""
        return torch.arange(self.prompt.shape[0], device=device) + self.vocab_size

    def reinit(self, parent_model=None) -> None:
        """Start from the embeddings of random vocabulary tokens (Lester et al., 2021)."""
        embeddings = self.transformer.word_embeddings.weight
        rows = torch.randint(0, embeddings.shape[0], (self.prompt.shape[0],), device=embeddings.device)
        with torch.no_grad():
            self.prompt.copy_(embeddings[rows])

    @BaseMixin.non_conflict
    def word_embedding_forward(self, input_ids, output_cross_layer, old_impl, **kw_args) -> torch.Tensor:
        virtual = input_ids - self.vocab_size  # [b, s], >= 0 at virtual tokens
        is_virtual = virtual >= 0
        embeddings = old_impl(input_ids.masked_fill(is_virtual, 0), output_cross_layer=output_cross_layer, **kw_args)
        prompt = self.prompt.to(embeddings.dtype)[virtual.clamp(0, self.prompt.shape[0] - 1)]  # [b, s, h]
        return torch.where(is_virtual[..., None], prompt, embeddings)
