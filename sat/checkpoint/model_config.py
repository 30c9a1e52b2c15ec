"""``model_config.json``: the class, architecture and model arguments of a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch

from sat import mpu
from sat.checkpoint.atomic import atomic_write_text
from sat.checkpoint.errors import CheckpointError
from sat.checkpoint.layout import MODEL_CONFIG
from sat.checkpoint.state_dict import unwrap_module
from sat.config import saved_fields
from sat.runtime import global_rank

# Always written: the architecture fields TransformerConfig marks "always", and the model-parallel
# size the shards were written with (a property of the files, not of the architecture).
_ARCH_ARGS = (*saved_fields("always"), "model_parallel_size")
# Written only when they differ from their default.
_OPTIONAL_ARCH_ARGS = saved_fields("changed")


def _json_safe(name: str, value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        warnings.warn(f"model_config.json: {name}={value!r} is not JSON-serialisable and is not saved", stacklevel=3)
        return False
    return True


def extract_model_specific_args_from_model(args, model: torch.nn.Module) -> dict:
    """The values on ``args`` of every argument that a (sub)model's ``add_model_specific_args``
    declares."""
    parser = argparse.ArgumentParser(add_help=False)
    for module in unwrap_module(model).modules():
        add_args = getattr(type(module), "add_model_specific_args", None)
        if add_args is None:
            continue
        try:
            add_args(parser)
        except argparse.ArgumentError:
            pass  # a parent class already declared it
    return {key: getattr(args, key) for key in vars(parser.parse_args([])) if hasattr(args, key)}


def _model_class_name(module: torch.nn.Module) -> str:
    """The class the model was built as: ``fully_shard`` (``--engine fsdp``) swaps in a subclass
    named ``FSDP<name>``, which no registry knows. (torch's FSDP is looked up, not imported:
    a model can be sharded only once something imported it.)"""
    cls = type(module)
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and isinstance(module, fsdp.FSDPModule):
        cls = next(base for base in cls.__bases__ if base is not fsdp.FSDPModule)
    return cls.__name__


def extract_model_specific_args_to_dump(args, model: torch.nn.Module) -> dict:
    """The contents of ``model_config.json`` for ``model``."""
    module = unwrap_module(model)
    to_dump: dict = {"model_class": _model_class_name(module)}
    if getattr(args, "tokenizer_type", "fake") != "fake":
        to_dump["tokenizer_type"] = args.tokenizer_type
    transformer = getattr(module, "transformer", None)
    for name in _ARCH_ARGS:
        # The backbone's value is the truth: a subclass may override what args says.
        value = getattr(transformer, name, None)
        value = value if value is not None else getattr(args, name, None)
        if name == "model_parallel_size" and value is None:
            value = mpu.get_model_parallel_world_size()
        if value is not None:
            to_dump[name] = value
    # A model without a backbone of its own (EncoderDecoderModel) is built from args alone.
    source = transformer if transformer is not None else args
    for name, default in _OPTIONAL_ARCH_ARGS.items():
        value = getattr(source, name, default)
        if value != default:
            to_dump[name] = value
    to_dump.update(extract_model_specific_args_from_model(args, module))
    return {key: value for key, value in to_dump.items() if _json_safe(key, value)}


def save_model_config(args, model: torch.nn.Module, save_dir: str) -> None:
    """Write ``<save_dir>/model_config.json`` (rank 0 only)."""
    if global_rank() == 0:
        config = extract_model_specific_args_to_dump(args, model)
        if "tokenizer_type" in config:
            from sat.tokenization import portable_tokenizer_type

            config["tokenizer_type"] = portable_tokenizer_type(config["tokenizer_type"], save_dir)
        atomic_write_text(os.path.join(save_dir, MODEL_CONFIG), json.dumps(config, indent=4))


def read_model_config(path: str) -> dict:
    """The JSON object in the ``model_config.json`` at ``path``; a ``CheckpointError`` naming the
    file when it is missing, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; not a sat checkpoint directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); fix or re-save it") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config
