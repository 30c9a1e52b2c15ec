"""Moving models between ``transformers`` and sat: ``from_hf``, ``to_hf``, ``save_hf``.

``transformers`` is imported only when one of these is called.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Mapping

import torch

from sat.checkpoint import (
    CheckpointError,
    DtypeArg,
    SafetensorsState,
    load_state_dict_into,
    load_torch_file,
    read_weight_map,
    resolve_dtype,
    save_safetensors,
    saved_dtype,
    set_dtype_flags,
)
from sat.helpers import gc_paused
from sat.hf.family import Family, family_for_model_type, family_for_sat_model
from sat.hf.mapping import MappingError
from sat.model.auto import get_model_class
from sat.model.build import get_meta_model
from sat.model.placement import DeviceMapArg, plan_placement
from sat.model.pretrained import report_loaded
from sat.runtime import resolve_device


def read_hf_weights(directory: str) -> Mapping[str, torch.Tensor]:
    """The state dict of an HF directory, without building the HF model: safetensors (one file, or
    shards with ``model.safetensors.index.json``) as a lazy mapping whose tensors are memory-mapped
    from their shard, read only where used; ``pytorch_model.bin`` (or its shards) loaded
    memory-mapped with ``weights_only``. A damaged shard, or an index naming a missing one,
    raises ``CheckpointError`` naming the file."""
    files = sorted(os.listdir(directory))
    if "model.safetensors.index.json" in files or "model.safetensors" in files:
        return SafetensorsState(directory, "model")
    if "pytorch_model.bin.index.json" in files:
        index = os.path.join(directory, "pytorch_model.bin.index.json")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(read_weight_map(index).values())):
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise CheckpointError(f"{index} names {path}, which does not exist (an incomplete copy?)")
            state.update(load_torch_file(path))
        return state
    if "pytorch_model.bin" in files:
        return load_torch_file(os.path.join(directory, "pytorch_model.bin"))
    raise FileNotFoundError(f"{directory} holds no model.safetensors or pytorch_model.bin (files: {files})")


def _read_source(source) -> tuple[object, dict[str, torch.Tensor]]:
    if isinstance(source, str | os.PathLike):
        from transformers import AutoConfig

        path = os.fspath(source)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a directory holding a transformers model")
        return AutoConfig.from_pretrained(path, local_files_only=True), read_hf_weights(path)
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        config = source.config
        if getattr(config, "architectures", None) != [type(source).__name__]:
            # The object's class is what its weights are (a BertModel loaded from a
            # BertForMaskedLM directory keeps that name in its config): record it as
            # save_pretrained would, so a family can tell a headless model from one with a head.
            config = copy.deepcopy(config)
            config.architectures = [type(source).__name__]
        return config, source.state_dict()
    raise TypeError(f"from_hf expects a directory or a transformers model, got {type(source).__name__}")


def _sat_args(family: Family, config) -> argparse.Namespace:
    return get_model_class(family.sat_class_name(config)).get_args(**family.config_to_args(config))


def hf_to_sat_state_dict(hf_state: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Translate a ``transformers`` state dict (with its config) to sat names and layouts."""
    family = family_for_model_type(config.model_type)
    args = _sat_args(family, config)
    state = family.prepare_hf_state(dict(hf_state), config)
    return family.state_map(args).hf_to_sat(state, family.context(args))


def sat_to_hf_state_dict(model: torch.nn.Module, config=None) -> dict[str, torch.Tensor]:
    """Translate a sat model's state dict to ``transformers`` names and layouts."""
    family = family_for_sat_model(model)
    # The HF config carries every size the map needs, so both directions share _sat_args.
    config = config if config is not None else family.model_to_config(model)
    args = _sat_args(family, config)
    return family.finish_hf_state(family.state_map(args).sat_to_hf(model.state_dict(), family.context(args)), config)


@gc_paused()
def from_hf(
    source,
    *,
    dtype: DtypeArg = None,
    device_map: DeviceMapArg = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
    **overrides,
) -> tuple[torch.nn.Module, argparse.Namespace]:
    """Build the sat model of a ``transformers`` model and load its weights.

    Args:
        source: an HF model directory (``config.json`` + safetensors) or an in-memory
            ``transformers`` model. Weights are not copied where the layouts agree: the sat
            model shares those tensors with an in-memory source (training one changes the
            other; translate a ``copy.deepcopy`` to keep them apart).
        dtype: ``None`` follows ``overrides`` (``bf16=True``; else float32), ``"auto"`` keeps the
            weights' own dtype, a ``torch.dtype`` (or ``"bf16"``...) converts tensor by tensor.
        device_map: placement of the layers over GPUs, CPU and disk, as for
            ``BaseModel.from_pretrained`` (docs/big_models.md).
        max_memory: the memory each device may take (``{0: "20GiB", "cpu": "60GiB"}``).
        offload_folder: where layers placed on ``"disk"`` are kept.
        overrides: sat arguments to set on top of the translated configuration
            (``bf16=True``, ``checkpoint_activations=True``...).
    Returns:
        ``(model, args)``, the model in eval mode.
    """
    started = time.perf_counter()
    config, hf_state = _read_source(source)
    family = family_for_model_type(config.model_type)
    args = _sat_args(family, config)
    for key, value in overrides.items():
        setattr(args, key, value)
    build = {}
    if dtype is not None:
        build["params_dtype"] = resolve_dtype(dtype, args, lambda: saved_dtype(hf_state), where="from_hf dtype")
        set_dtype_flags(args, build["params_dtype"])
    state_map = family.state_map(args)
    sat_state = state_map.hf_to_sat(family.prepare_hf_state(dict(hf_state), config), family.context(args))
    # The source supplies every weight; each tensor converts to the model's dtype as it is assigned.
    model = get_meta_model(args, get_model_class(family.sat_class_name(config)), **build)
    placement = plan_placement(model, device_map, max_memory, offload_folder)
    destination = placement.destinations() if placement is not None else resolve_device(args)
    missing, unexpected = load_state_dict_into(model, sat_state, destination)
    missing = [key for key in missing if key not in state_map.sat_only]
    if missing or unexpected:
        raise MappingError(f"{family.name}: the translated state dict misses {missing} and has extra {unexpected}")
    model.eval()
    if placement is not None:
        placement.dispatch(model)
    report_loaded(
        model,
        os.fspath(source) if isinstance(source, str | os.PathLike) else type(source).__name__,
        time.perf_counter() - started,
    )
    return model, args


def _checked_hf_state(model: torch.nn.Module) -> tuple[type, object, dict[str, torch.Tensor], dict[str, str]]:
    """``(HF class, HF config, HF state dict, tied keys)`` of sat ``model``; a ``MappingError``
    unless the state dict has exactly the keys and shapes of that class (checked on ``meta``).
    The tied keys map each key that class ties on loading to the key it takes the tensor from."""
    import transformers

    family = family_for_sat_model(model)
    config = family.model_to_config(model)
    hf_class = getattr(transformers, family.hf_class_name(_sat_args(family, config)))
    hf_state = sat_to_hf_state_dict(model, config)
    with torch.device("meta"):
        skeleton = hf_class(config)
    expected = skeleton.state_dict()
    missing = [key for key in expected if key not in hf_state]
    extra = [key for key in hf_state if key not in expected]
    shapes = [
        f"{key}: {tuple(hf_state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in hf_state and hf_state[key].shape != value.shape
    ]
    if missing or extra or shapes:
        raise MappingError(f"{family.name}: to_hf state dict misses {missing}, has extra {extra}, shapes {shapes}")
    return hf_class, config, hf_state, dict(getattr(skeleton, "all_tied_weights_keys", {}))


def to_hf(model: torch.nn.Module):
    """The ``transformers`` model equal to sat ``model`` (eval mode, same dtype)."""
    hf_class, config, hf_state, _ = _checked_hf_state(model)
    dtype = next(model.parameters()).dtype
    hf_model = hf_class.from_pretrained(None, config=config, state_dict=hf_state, dtype=dtype)
    return hf_model.eval()


def save_hf(model: torch.nn.Module, directory: str, max_shard_size: int | str = "5GB") -> None:
    """Write ``model`` as a ``transformers`` directory that ``AutoModel*.from_pretrained`` loads:
    ``config.json`` and the weights as ``model.safetensors``, or past ``max_shard_size`` (bytes,
    or ``"500MB"``, ``"2GiB"``...) as ``model-0000i-of-0000n.safetensors`` shards with
    ``model.safetensors.index.json``, the names ``save_pretrained`` uses.

    No ``transformers`` model is built: the translated state dict (the model's own tensors where
    the layouts agree, views or per-tensor results elsewhere) is written one tensor at a time.
    A tied weight (an LM head that is the word embedding) is written once, under the key it is
    tied to, as ``save_pretrained`` does: transformers ties it again on loading. Where the two
    tensors differ, both are written.
    """
    hf_class, config, hf_state, tied = _checked_hf_state(model)
    for key, source in tied.items():
        if key in hf_state and source in hf_state and torch.equal(hf_state[key], hf_state[source]):
            del hf_state[key]
    config = copy.deepcopy(config)
    config.architectures = [hf_class.__name__]
    config.dtype = next(model.parameters()).dtype
    os.makedirs(directory, exist_ok=True)
    save_safetensors(hf_state, directory, "model", max_shard_size, metadata={"format": "pt"}, keep_aliases=False)
    config.save_pretrained(directory)
