"""Mistral (``MistralForCausalLM``, and the headless ``MistralModel``) <-> sat ``MistralModel``.

LLaMA's map; the config's ``sliding_window`` (one for every layer, ``None``: full attention)
is the backbone's.
"""

from __future__ import annotations

from sat.hf.families import llama
from sat.hf.family import Family, register_family

_HEAD, _HEADLESS = "MistralForCausalLM", "MistralModel"


def config_to_args(config) -> dict:
    return {**llama.config_to_args(config, name="Mistral"), "sliding_window": config.sliding_window or 0}


def model_to_config(model):
    from transformers import MistralConfig

    window = model.transformer.sliding_window
    if isinstance(window, list):
        raise ValueError(f"MistralConfig has one sliding_window for every layer; this model has {window}")
    return MistralConfig(**llama.config_fields(model, _HEAD, _HEADLESS), sliding_window=window or None)


register_family(
    Family(
        name="mistral",
        model_types=("mistral",),
        sat_class="MistralModel",
        hf_class=lambda args: _HEADLESS if args.headless else _HEAD,
        table=llama.table,
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=llama.context,
        prepare_hf_state=llama.prepare_hf_state,
        ignore_hf=llama.IGNORE_HF,
    )
)
