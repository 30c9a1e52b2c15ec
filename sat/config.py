"""The one table of architecture defaults: ``TransformerConfig``.

Every architecture setting of the backbone is a field here, with its default and how it travels:

- ``arg``: the attribute of ``args`` it is read from (``hidden_dropout`` feeds two fields);
- ``cli``: the default of its command-line flag where that differs from the backbone's (the
  original trains with dropout 0.1 from the command line, while a backbone built without
  ``args`` has none, and ``get_args`` proposes a 1024-wide model where the backbone has no default);
- ``saved``: whether ``model_config.json`` records it ``"always"``, only when it differs from the
  default (``"changed"``), or ``"never"`` (dropout and checkpointing are run-time choices).

``ARGS_DEFAULT`` (the original's args -> constructor table), the argparse defaults in
``sat.arguments``, the backbone's keyword defaults and the optional ``model_config.json`` fields
are all derived from this table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Saved = Literal["always", "changed", "never"]
_SAME = object()  # the command line uses the backbone's default
LAYERNORM_ORDERS = ("pre", "post", "sandwich", "parallel")


def _arch(
    default: Any = dataclasses.MISSING,
    *,
    arg: str | None = None,
    cli: Any = _SAME,
    saved: Saved = "changed",
    in_args_default: bool = True,
    from_args: bool = True,
) -> Any:
    metadata = {"arg": arg, "cli": cli, "saved": saved, "in_args_default": in_args_default, "from_args": from_args}
    if default is dataclasses.MISSING:
        return field(metadata={**metadata, "in_args_default": False})
    return field(default=default, metadata=metadata)


@dataclass
class TransformerConfig:
    """Architecture of a ``BaseTransformer``; field names are its constructor keywords."""

    num_layers: int = _arch(cli=6, saved="always")
    vocab_size: int = _arch(cli=100, saved="always")
    hidden_size: int = _arch(cli=1024, saved="always")
    num_attention_heads: int = _arch(cli=16, saved="always")
    max_sequence_length: int = _arch(cli=512, saved="always")
    embedding_dropout_prob: float = _arch(0.0, arg="hidden_dropout", cli=0.1, saved="never")
    attention_dropout_prob: float = _arch(0.0, arg="attention_dropout", cli=0.1, saved="never")
    output_dropout_prob: float = _arch(0.0, arg="hidden_dropout", cli=0.1, saved="never")
    drop_path: float = _arch(0.0, saved="never")
    checkpoint_activations: bool = _arch(False, saved="never")
    checkpoint_num_layers: int = _arch(1, saved="never")
    checkpoint_skip_layers: int = _arch(0, saved="never")
    layernorm_epsilon: float = _arch(1.0e-5)
    # A constructor keyword only: the original never read it from args.
    init_method_std: float = _arch(0.02, saved="never", in_args_default=False, from_args=False)
    inner_hidden_size: int | None = _arch(None)
    hidden_size_per_attention_head: int | None = _arch(None)
    cross_hidden_size_per_attention_head: int | None = _arch(None)
    # The original read it from args without a fallback, so it is no ARGS_DEFAULT key.
    layernorm_order: str = _arch("pre", saved="always", in_args_default=False)
    parallel_output: bool = _arch(False)
    is_decoder: bool | list[bool] = _arch(False)
    cross_attn_hidden_size: int | None = _arch(None)
    use_bias: bool = _arch(True)
    use_qkv_bias: bool = _arch(False)
    num_multi_query_heads: int = _arch(0)
    cross_num_multi_query_heads: int = _arch(0)
    row_parallel_linear_final_bias: bool = _arch(True)
    is_gated_mlp: bool = _arch(False)
    is_rotary_emb: bool = _arch(False)
    rotary_base: float = _arch(10000.0)
    num_experts: int = _arch(1)
    use_final_layernorm: bool = _arch(True)
    # Not in the original's ARGS_DEFAULT (it had no sliding window): read from args when set.
    sliding_window: int | list[int] = _arch(0, in_args_default=False)
    # Fields the original did not have (appended: positional arguments keep their places).
    # GPT-J: a biased MLP beside unbiased attention (MLP biases = use_bias or use_mlp_bias).
    use_mlp_bias: bool = _arch(False, in_args_default=False)
    # Partial rotary (GPT-J rotates the first rotary_dim channels of each head; None: all) and
    # the pair layout (channel 2i with 2i + 1) instead of halves (i with i + dim / 2).
    rotary_dim: int | None = _arch(None, in_args_default=False)
    rotary_interleaved: bool = _arch(False, in_args_default=False)
    # Post-LN residual scale alpha (ChatGLM-6B, GLM-130B's DeepNorm use sqrt(2 L)): the post order
    # adds alpha * ln(x) to each branch's output. A constructor keyword of those models, not saved.
    residual_scale: float = _arch(1.0, saved="never", in_args_default=False, from_args=False)

    def __post_init__(self) -> None:
        if self.layernorm_order not in LAYERNORM_ORDERS:
            raise ValueError(f"layernorm_order must be one of {LAYERNORM_ORDERS}, got {self.layernorm_order!r}")
        if self.checkpoint_activations and self.checkpoint_skip_layers > self.num_layers - self.checkpoint_num_layers:
            raise ValueError(
                f"checkpoint_skip_layers ({self.checkpoint_skip_layers}) leaves no layer to checkpoint with "
                f"{self.num_layers} layers in chunks of {self.checkpoint_num_layers}"
            )
        if self.hidden_size_per_attention_head is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads}), or set hidden_size_per_attention_head"
            )
        windows = self.sliding_window if isinstance(self.sliding_window, list) else [self.sliding_window]
        if isinstance(self.sliding_window, list) and len(windows) != self.num_layers:
            raise ValueError(f"sliding_window has {len(windows)} entries for {self.num_layers} layers")
        if any(window < 0 for window in windows):
            raise ValueError(f"sliding_window must be >= 0 (0: no window), got {self.sliding_window}")
        if self.rotary_dim is not None and (self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_size):
            raise ValueError(
                f"rotary_dim ({self.rotary_dim}) must be even and between 2 and the head size ({self.head_size})"
            )
        if self.layernorm_order == "parallel" and any(self.is_decoder_layer(i) for i in range(self.num_layers)):
            raise ValueError("layernorm_order 'parallel' has no cross-attention: is_decoder must be False")
        for heads, kv_heads in (
            ("num_attention_heads", "num_multi_query_heads"),
            ("num_attention_heads", "cross_num_multi_query_heads"),
        ):
            if getattr(self, kv_heads) and getattr(self, heads) % getattr(self, kv_heads):
                raise ValueError(
                    f"{heads} ({getattr(self, heads)}) must be a multiple of {kv_heads} ({getattr(self, kv_heads)})"
                )

    @property
    def head_size(self) -> int:
        """Width of one attention head (``hidden_size_per_attention_head`` or ``hidden / heads``)."""
        return self.hidden_size_per_attention_head or self.hidden_size // self.num_attention_heads

    def is_decoder_layer(self, layer_id: int) -> bool:
        """Whether layer ``layer_id`` has cross-attention (``is_decoder`` may be a per-layer list)."""
        return self.is_decoder[layer_id] if isinstance(self.is_decoder, list) else self.is_decoder

    def sliding_window_of_layer(self, layer_id: int) -> int:
        """Layer ``layer_id``'s sliding window: its self-attention sees keys less than this many
        positions back (0: no window; ``sliding_window`` may be a per-layer list)."""
        window = self.sliding_window
        return window[layer_id] if isinstance(window, list) else window

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> TransformerConfig:
        """The configuration ``args`` describes (absent attributes take the defaults), with
        ``overrides`` (a subclass's fixed architecture) on top. Raises naming missing fields."""
        values = {}
        for f in dataclasses.fields(cls):
            name = arg_name(f)
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif f.metadata["from_args"] and hasattr(args, name):
                values[f.name] = getattr(args, name)
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in values]
        if missing:
            raise ValueError(f"the architecture needs args.{', args.'.join(missing)}")
        return cls(**values)

    def to_kwargs(self) -> dict[str, Any]:
        """The fields as ``BaseTransformer`` keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING


def arg_name(f: dataclasses.Field) -> str:
    """The attribute of ``args`` that field ``f`` is read from."""
    return f.metadata["arg"] or f.name


def cli_default(arg: str) -> Any:
    """The command-line default of ``--<arg>`` (``arg`` as an attribute name, ``hidden_dropout``)."""
    for f in dataclasses.fields(TransformerConfig):
        if arg_name(f) == arg:
            return f.default if f.metadata["cli"] is _SAME else f.metadata["cli"]
    raise KeyError(f"{arg!r} is not an architecture argument")


def saved_fields(policy: Saved) -> dict[str, Any]:
    """``{field: default}`` of the fields that ``model_config.json`` records under ``policy``."""
    return {
        f.name: (None if _required(f) else f.default)
        for f in dataclasses.fields(TransformerConfig)
        if f.metadata["saved"] == policy
    }


# Constructor keyword of BaseTransformer -> (attribute of args, default when args lacks it).
ARGS_DEFAULT: dict[str, tuple[str, Any]] = {
    f.name: (arg_name(f), f.default) for f in dataclasses.fields(TransformerConfig) if f.metadata["in_args_default"]
}
