"""The shared backbone: embeddings, the stack of layers, the final norm and the output head.

Every model in the zoo is this stack plus hooks. ``BaseTransformer`` owns the word and
position embeddings and the final norm, and the defaults of the hooks that use them
(``word_embedding_forward``, ``position_embedding_forward``, ``final_forward``); each layer's
modules own theirs (``sat.model.layers``). Parameter names
(``transformer.layers.0.attention.query_key_value.weight``...) are the checkpoint format and
match the original library.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.utils._pytree as pytree

from sat.config import TransformerConfig
from sat.model.input_checks import check_ids_below
from sat.model.layers import (
    MLP,
    BaseTransformerLayer,
    CrossAttention,
    HookedModule,
    LayerBuild,
    SelfAttention,
    standard_attention,
)
from sat.model.position_embedding.rotary import RotaryEmbedding
from sat.mpu import VocabParallelEmbedding, checkpoint, vocab_parallel_logits
from sat.mpu.utils import InitMethod, gelu, scaled_init_method, unscaled_init_method
from sat.ops.attention import AttentionMask, resolve_attention_mask
from sat.ops.layernorm import LayerNorm

__all__ = [
    "BaseTransformer",
    "BaseTransformerLayer",
    "CrossAttention",
    "MLP",
    "SelfAttention",
    "standard_attention",
]


class BaseTransformer(HookedModule):
    """Embeddings, ``num_layers`` layers and an optional final layer norm, with hook points.

    Built from a ``TransformerConfig`` (``config=``) or from its fields as keywords (the
    original's signature: ``BaseTransformer(num_layers, vocab_size, hidden_size,
    num_attention_heads, max_sequence_length, ...)``); the remaining keywords say how modules
    are made. The configuration's fields read (and write) as attributes: ``self.hidden_size``.

    ``forward(input_ids, position_ids, attention_mask, *, output_hidden_states=False, **kw_args)``
    returns ``[logits, *output_per_layers]``: the ``final_forward`` output and one dict per layer
    (what hooks wrote into ``output_this_layer``, plus ``'hidden_states'`` when asked). With
    ``last_logits_only=True`` (what generation passes) the final norm and ``final_forward`` run on
    the last position alone: logits ``[b, 1, vocab]``.
    ``attention_mask`` is an ``AttentionMask``: ``None`` (full attention), ``CAUSAL_MASK`` (``-1``)
    or a 1 = attend tensor of shape ``[sq, sk]`` or ``[b, 1, sq, sk]``.
    """

    config: TransformerConfig

    def __init__(
        self,
        *architecture,
        config: TransformerConfig | None = None,
        layernorm: Callable[..., torch.nn.Module] = LayerNorm,
        activation_func: Callable[[torch.Tensor], torch.Tensor] = gelu,
        init_method: InitMethod | None = None,
        hooks: dict | None = None,
        params_dtype: torch.dtype = torch.float,
        skip_init: bool = False,
        device: torch.device | str | int = torch.device("cpu"),
        **architecture_kwargs,
    ):
        super().__init__()
        if config is None:
            config = TransformerConfig(*architecture, **architecture_kwargs)
        elif architecture or architecture_kwargs:
            config = dataclasses.replace(config, **dict(zip(_field_names(), architecture)), **architecture_kwargs)
        else:
            config = copy.copy(config)
        self.config = config
        # One dict shared by every module; BaseModel.forward refills it, so several models
        # (an encoder and a decoder sharing embeddings) can use one transformer.
        self._attach(copy.copy(hooks) if hooks is not None else {}, self)
        device = torch.device(device)
        if init_method is None:
            self.init_method = unscaled_init_method(config.init_method_std)
            self.output_layer_init_method = scaled_init_method(config.init_method_std, config.num_layers)
        else:
            self.init_method = self.output_layer_init_method = init_method
        build = LayerBuild(
            hooks=self.hooks,
            transformer=self,
            layernorm=layernorm,
            activation_func=activation_func,
            init_method=self.init_method,
            output_layer_init_method=self.output_layer_init_method,
            params_dtype=params_dtype,
            skip_init=skip_init,
            device=device,
        )

        self.embedding_dropout = torch.nn.Dropout(config.embedding_dropout_prob)
        self.word_embeddings = VocabParallelEmbedding(
            config.vocab_size,
            config.hidden_size,
            params_dtype=params_dtype,
            init_method=unscaled_init_method(config.init_method_std),
            skip_init=skip_init,
            device=device,
        )
        if config.is_rotary_emb:
            # inv_freq is computed, not always loaded (sat.hf translations omit it): real even
            # in a meta build.
            rotary_device = torch.device("cpu") if device.type == "meta" else device
            self.position_embeddings = RotaryEmbedding(
                config.rotary_dim or config.head_size,
                base=config.rotary_base,
                device=rotary_device,
                interleaved=config.rotary_interleaved,
            )
        else:
            self.position_embeddings = _absolute_position_embedding(config, build)
        self.layers = torch.nn.ModuleList(
            BaseTransformerLayer(config, layer_id, build) for layer_id in range(config.num_layers)
        )
        if config.use_final_layernorm:
            self.final_layernorm = build.norm(config.hidden_size, config.layernorm_epsilon)

    # ----------------------------------------------------------------- hook defaults
    def default_word_embedding(self, input_ids: torch.Tensor, output_cross_layer: dict, **kw_args) -> torch.Tensor:
        """The default ``word_embedding_forward``: ``input_ids [b, s]`` -> ``[b, s, h]``."""
        check_ids_below(input_ids, self.word_embeddings.num_embeddings, "input_ids", "vocab_size")
        return self.word_embeddings(input_ids)

    def default_position_embedding(
        self, position_ids: torch.Tensor, output_cross_layer: dict, **kw_args
    ) -> torch.Tensor | None:
        """The default ``position_embedding_forward``: ``position_ids [b, s]`` -> ``[b, s, h]``, or
        ``None`` (nothing is added) when rotary embeddings are applied inside attention."""
        if self.is_rotary_emb:
            return None
        limit = getattr(self.position_embeddings, "num_embeddings", None)
        if limit is not None and position_ids is not None:
            check_ids_below(position_ids, limit, "position_ids", "max_sequence_length")
        return self.position_embeddings(position_ids)

    def default_final(self, logits: torch.Tensor, **kw_args) -> torch.Tensor:
        """The default ``final_forward``: the tied word embedding as output head, final hidden
        states ``[b, s, h]`` -> ``[b, s, vocab]``; model-parallel vocabulary shards are gathered
        unless ``parallel_output``."""
        return vocab_parallel_logits(logits, self.word_embeddings.weight, kw_args["parallel_output"])

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: AttentionMask,
        *,
        output_hidden_states: bool = False,
        last_logits_only: bool = False,
        **kw_args,
    ) -> list:
        if input_ids.dim() < 2:
            raise ValueError(f"input_ids must be at least 2-D [batch, seq], got shape {tuple(input_ids.shape)}")
        dtype = next(self.parameters()).dtype
        mask = resolve_attention_mask(attention_mask, input_ids.shape[1], dtype, input_ids.device)

        output_cross_layer: dict = {}  # the embedding hooks may seed values for layer 0
        hidden_states = self.hook("word_embedding_forward", self.default_word_embedding)(
            input_ids, output_cross_layer=output_cross_layer, **kw_args
        )  # [b, s, h]
        position_embeddings = self.hook("position_embedding_forward", self.default_position_embedding)(
            position_ids, output_cross_layer=output_cross_layer, **kw_args
        )
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        hidden_states = self.embedding_dropout(hidden_states)

        hidden_states, output_per_layers = self._run_layers(
            hidden_states, mask, position_ids, kw_args, output_cross_layer, output_hidden_states
        )
        if last_logits_only:  # generation reads the last position only: skip the other rows' head
            hidden_states = hidden_states[:, -1:]  # [b, 1, h]
        logits = self.final_layernorm(hidden_states) if self.use_final_layernorm else hidden_states
        # No copy into the model-parallel region here: heads with parallel weights enter it
        # themselves (vocab_parallel_logits, ColumnParallelLinear); a replicated head (a
        # classifier) must not, or its gradient would be summed over the ranks.
        final_forward = self.hook("final_forward", self.default_final)
        logits = final_forward(logits, **kw_args, parallel_output=self.parallel_output)
        return [logits, *output_per_layers]

    def _run_layers(self, hidden_states, mask, position_ids, kw_args, cross, output_hidden_states):
        num_layers = len(self.layers)
        chunk = self.checkpoint_num_layers if self.checkpoint_activations and torch.is_grad_enabled() else num_layers
        output_per_layers: list[dict] = []
        for start in range(0, num_layers, chunk):
            end = min(start + chunk, num_layers)
            args = (start, end, hidden_states, mask, position_ids, kw_args, cross, output_hidden_states)
            use_checkpoint = chunk < num_layers and start + self.checkpoint_skip_layers < num_layers
            run = self._run_chunk_checkpointed if use_checkpoint else self._run_chunk
            hidden_states, outputs, cross = run(*args)
            output_per_layers.extend(outputs)
        return hidden_states, output_per_layers

    def _run_chunk(self, start, end, hidden_states, mask, position_ids, kw_args, cross, output_hidden_states):
        outputs = []
        for layer_id in range(start, end):
            output_this_layer, output_cross_layer = {}, {}
            hidden_states = self.layers[layer_id](
                hidden_states,
                mask,
                layer_id=layer_id,
                **kw_args,
                position_ids=position_ids,
                **cross,
                output_this_layer=output_this_layer,
                output_cross_layer=output_cross_layer,
            )
            if isinstance(hidden_states, tuple):  # legacy hooks returned (hidden_states, ...)
                hidden_states = hidden_states[0]
            if output_hidden_states:
                output_this_layer["hidden_states"] = hidden_states
            outputs.append(output_this_layer)
            cross = output_cross_layer
        return hidden_states, outputs, cross

    def _run_chunk_checkpointed(self, start, end, hidden_states, mask, position_ids, kw_args, cross, hidden_out):
        # Checkpoint functions take and return tensors only, so the nested inputs (kwargs,
        # cross-layer dicts) are flattened, their tensors passed through, and the rest kept here.
        in_leaves, in_spec = pytree.tree_flatten((mask, position_ids, kw_args, cross))
        tensor_slots = [i for i, leaf in enumerate(in_leaves) if isinstance(leaf, torch.Tensor)]
        out_structure: list = []

        def chunk_forward(hidden, *tensors):
            leaves = list(in_leaves)
            for slot, tensor in zip(tensor_slots, tensors):
                leaves[slot] = tensor
            mask_, position_ids_, kw_args_, cross_ = pytree.tree_unflatten(leaves, in_spec)
            hidden, outputs, next_cross = self._run_chunk(
                start, end, hidden, mask_, position_ids_, kw_args_, cross_, hidden_out
            )
            out_leaves, out_spec = pytree.tree_flatten((outputs, next_cross))
            out_structure[:] = [out_spec, out_leaves]
            return (hidden, *[leaf for leaf in out_leaves if isinstance(leaf, torch.Tensor)])

        hidden_states, *out_tensors = checkpoint(chunk_forward, hidden_states, *[in_leaves[i] for i in tensor_slots])
        out_spec, out_leaves = out_structure
        tensors = iter(out_tensors)
        leaves = [next(tensors) if isinstance(leaf, torch.Tensor) else leaf for leaf in out_leaves]
        outputs, next_cross = pytree.tree_unflatten(leaves, out_spec)
        return hidden_states, outputs, next_cross


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TransformerConfig)]


def _config_attribute(name: str) -> property:
    def get(self: BaseTransformer):
        return getattr(self.config, name)

    def set(self: BaseTransformer, value) -> None:
        setattr(self.config, name, value)

    return property(get, set, doc=f"``config.{name}``")


# The configuration's fields as attributes, as the original's backbone had them: hooks read
# ``self.transformer.is_rotary_emb``, and model_config.json is written from them.
for _name in _field_names():
    setattr(BaseTransformer, _name, _config_attribute(_name))


def _absolute_position_embedding(config: TransformerConfig, build: LayerBuild) -> torch.nn.Embedding:
    shape = (config.max_sequence_length, config.hidden_size)
    weight = torch.empty(shape, dtype=build.params_dtype, device=build.device)
    # The draw nn.Embedding's own initialisation makes, kept so that a seed gives the same
    # weights as ever (and as the original library, which also drew twice). A meta build draws
    # nothing, and skips the call's one-off import of torch._dynamo.
    if build.device.type != "meta":
        torch.nn.init.normal_(weight)
    if not build.skip_init:
        torch.nn.init.normal_(weight, mean=0.0, std=config.init_method_std)
    # Initialised before the module takes it: under ZeRO-3 (deepspeed.zero.Init) a module's
    # parameters are partitioned as soon as its constructor returns, and an init after
    # that would write into an empty placeholder.
    return torch.nn.Embedding(config.max_sequence_length, config.hidden_size, _weight=weight)
