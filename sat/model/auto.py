"""``AutoModel`` and the lookup from a class name to a model class.

Above the zoo (``sat.model.official``), which it imports itself when a name is not registered
yet: ``model_config.json`` names a class, ``get_model_class`` finds it.
"""

from __future__ import annotations

import argparse
import json

import torch

from sat.checkpoint import CheckpointError, is_hf_directory, model_config_path
from sat.helpers import print_columns
from sat.model.pretrained import load_pretrained, resolve_checkpoint_dir
from sat.model.registry import model_registry


def get_model_class(name: str) -> type:
    """The model class registered as ``name``; the zoo is imported first (its classes register
    themselves) when no class of that name is registered yet."""
    if name not in model_registry:
        import sat.model.official  # noqa: F401  (its classes register themselves)
    return model_registry.get(name)


def list_avail_models() -> list[str]:
    """Print and return the model classes in ``sat.model.official``."""
    import sat.model.official as official

    names = sorted(name for name in dir(official) if isinstance(getattr(official, name), type))
    print('Available model definitions (example: "from sat.model import GPT2Model"):')
    print_columns(names)
    return names


class AutoModel:
    """Builds whatever class a checkpoint's ``model_config.json`` names (``model_class``)."""

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        args: argparse.Namespace | None = None,
        *,
        home_path: str | None = None,
        url: str | None = None,
        prefix: str = "",
        build_only: bool = False,
        use_node_group: bool = True,
        overwrite_args: dict | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | None = None,
        **kwargs,
    ) -> tuple[torch.nn.Module, argparse.Namespace]:
        """Same arguments and result as ``BaseModel.from_pretrained``; the class comes from
        the checkpoint (a ``transformers`` directory: from its config)."""
        model_dir = resolve_checkpoint_dir(name, home_path, url)
        model_cls = None if is_hf_directory(model_dir) else _model_class(model_dir, args, overwrite_args)
        return load_pretrained(
            model_cls,
            model_dir,
            args,
            prefix=prefix,
            build_only=build_only,
            use_node_group=use_node_group,
            overwrite_args=overwrite_args,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
            **kwargs,
        )

    from_pretrained_base = from_pretrained


def _model_class(model_dir: str, args: argparse.Namespace | None, overwrite_args: dict | None) -> type:
    """The class to build, with the precedence ``load_pretrained`` gives every argument:
    ``overwrite_args``, then ``model_config.json``, then ``args``."""
    path = model_config_path(model_dir)
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    name = (overwrite_args or {}).get("model_class", config.get("model_class", getattr(args, "model_class", None)))
    if name is None:
        raise CheckpointError(f"{path} has no 'model_class'; AutoModel cannot tell which class to build")
    return get_model_class(name)
