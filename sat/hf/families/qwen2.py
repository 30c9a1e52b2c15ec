"""Qwen2 (``Qwen2ForCausalLM``, and the headless ``Qwen2Model``) <-> sat ``Qwen2Model``.

LLaMA's map plus the q/k/v biases (stacked into ``query_key_value.bias`` like the weights).
Sliding-window layers (``use_sliding_window``: the layers from ``max_window_layers`` on, or as
``layer_types`` says) become the backbone's per-layer ``sliding_window``.
"""

from __future__ import annotations

from sat.hf.families import llama
from sat.hf.family import Family, register_family

_HEAD, _HEADLESS = "Qwen2ForCausalLM", "Qwen2Model"
_LAYER_TYPES = ("full_attention", "sliding_attention")


def layer_windows(config) -> int | list[int]:
    """The backbone's ``sliding_window`` for a ``Qwen2Config``: 0 (no sliding layer) or one
    window per layer (0 on full-attention layers)."""
    types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
    unknown = sorted(set(types) - set(_LAYER_TYPES))
    if unknown:
        raise ValueError(f"Qwen2 with layer_types {unknown} is not supported (only {list(_LAYER_TYPES)})")
    if "sliding_attention" not in types:
        return 0
    if not config.sliding_window:
        raise ValueError("Qwen2 with sliding_attention layers but no sliding_window (use_sliding_window=False)")
    return [config.sliding_window if kind == "sliding_attention" else 0 for kind in types]


def config_to_args(config) -> dict:
    return {**llama.config_to_args(config, name="Qwen2"), "sliding_window": layer_windows(config)}


def model_to_config(model):
    from transformers import Qwen2Config

    windows = model.transformer.sliding_window
    windows = windows if isinstance(windows, list) else [windows] * model.transformer.num_layers
    sizes = sorted(set(windows) - {0})
    if len(sizes) > 1:
        raise ValueError(f"Qwen2Config has one sliding_window for every sliding layer; this model has {sizes}")
    window = dict(
        use_sliding_window=bool(sizes),
        sliding_window=sizes[0] if sizes else None,
        # The first sliding layer, for readers of max_window_layers; layer_types is the truth.
        max_window_layers=windows.index(sizes[0]) if sizes else len(windows),
        layer_types=["sliding_attention" if size else "full_attention" for size in windows],
    )
    return Qwen2Config(**llama.config_fields(model, _HEAD, _HEADLESS), **window)


register_family(
    Family(
        name="qwen2",
        model_types=("qwen2",),
        sat_class="Qwen2Model",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=lambda args: llama.table(args, qkv_bias=True),
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=llama.context,
        prepare_hf_state=llama.prepare_hf_state,
        ignore_hf=llama.IGNORE_HF,
    )
)
