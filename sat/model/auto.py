"""``AutoModel`` and the lookup from a class name to a model class.

Above the zoo (``sat.model.official``), which it imports itself when a name is not registered
yet: ``model_config.json`` names a class, ``get_model_class`` finds it.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from sat.checkpoint import CheckpointError, is_hf_directory, model_config_path, read_model_config
from sat.checkpoint.broadcast import share_from_rank0
from sat.helpers import print_columns
from sat.model.pretrained import load_pretrained, rank0_loading_applies, resolve_checkpoint_dir
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
        if rank0_loading_applies(kwargs.get("from_rank0", False)):
            # Only global rank 0 opens the checkpoint: it tells the others which class to build.
            model_dir = name
            model_cls = share_from_rank0(partial(_checkpoint_class, name, home_path, url, args, overwrite_args))
        else:
            model_dir = resolve_checkpoint_dir(name, home_path, url)
            model_cls = _checkpoint_class(model_dir, None, None, args, overwrite_args)
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


def _checkpoint_class(
    name: str, home_path: str | None, url: str | None, args: argparse.Namespace | None, overwrite_args: dict | None
) -> type | None:
    """The class to build from checkpoint ``name`` (None for a ``transformers`` directory, whose
    config says what to build)."""
    model_dir = resolve_checkpoint_dir(name, home_path, url)
    return None if is_hf_directory(model_dir) else _model_class(model_dir, args, overwrite_args)


def _model_class(model_dir: str, args: argparse.Namespace | None, overwrite_args: dict | None) -> type:
    """The class to build, with the precedence ``load_pretrained`` gives every argument:
    ``overwrite_args``, then ``model_config.json``, then ``args``."""
    path = model_config_path(model_dir)
    config = read_model_config(path)
    name = (overwrite_args or {}).get("model_class", config.get("model_class", getattr(args, "model_class", None)))
    if name is None:
        raise CheckpointError(f"{path} has no 'model_class'; AutoModel cannot tell which class to build")
    try:
        return get_model_class(name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
