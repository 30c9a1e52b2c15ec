"""Reading a model and its tokenizer from what a user points at: a sat checkpoint directory, a
``transformers`` directory, or a GGUF file (read by ``transformers``, which dequantises it)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GGUF_SUFFIX = ".gguf"


def add_model_options(parser: argparse.ArgumentParser, *, dtype_help: str) -> None:
    """``--dtype``, ``--device-map`` and ``--tokenizer``, as ``from_pretrained`` names them."""
    parser.add_argument("--dtype", default=None, help=dtype_help)
    parser.add_argument(
        "--device-map",
        default=None,
        choices=("auto", "balanced", "sequential"),
        help="spread the weights over the GPUs, the CPU and the disk (from_pretrained's device_map)",
    )
    parser.add_argument("--offload-folder", default=None, help="where --device-map puts weights bound for 'disk'")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="a transformers tokenizer folder or a sentencepiece .model file; default: the model's own "
        "(the transformers directory, or the one model_config.json records)",
    )


def is_gguf(path: str) -> bool:
    """Whether ``path`` is a GGUF file."""
    return os.path.isfile(path) and path.endswith(GGUF_SUFFIX)


def check_exists(path: str) -> None:
    """A FileNotFoundError naming ``path`` and what it should be."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: pass a sat checkpoint directory, a transformers model directory or a .gguf file"
        )


def load_model(
    path: str, *, dtype: str | None = None, device_map: str | None = None, offload_folder: str | None = None
):
    """``(model, args)`` for ``path`` in eval mode, in one process (a model-parallel checkpoint is
    merged as it loads); the keywords are ``from_pretrained``'s, passed on when set."""
    check_exists(path)
    given = {"dtype": dtype, "device_map": device_map, "offload_folder": offload_folder}
    kwargs = {key: value for key, value in given.items() if value is not None}
    if is_gguf(path):
        from sat.hf import from_hf

        kwargs.pop("dtype", None)  # transformers dequantises to it
        return from_hf(_gguf_model(path, dtype), **kwargs)
    from sat.checkpoint import is_hf_directory, model_config_path, read_model_config
    from sat.model import AutoModel

    overwrite = None
    if not is_hf_directory(path) and read_model_config(model_config_path(path)).get("model_parallel_size", 1) > 1:
        overwrite = {"model_parallel_size": 1}
    model, args = AutoModel.from_pretrained(path, overwrite_args=overwrite, **kwargs)
    return model.eval(), args


def _gguf_model(path: str, dtype: str | None) -> torch.nn.Module:
    """The ``transformers`` causal LM of a GGUF file, dequantised to float32 (or ``dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sat.checkpoint import resolve_dtype

    folder, name = os.path.split(os.path.abspath(path))
    wanted = (
        torch.float32
        if dtype in (None, "auto")
        else resolve_dtype(dtype, argparse.Namespace(), torch.get_default_dtype)
    )
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=wanted).eval()


def load_tokenizer(path: str, args: argparse.Namespace, override: str | None = None):
    """The tokenizer of the model at ``path``: ``override`` (``--tokenizer``) if given, else the
    GGUF file's, the ``transformers`` directory's, or the one ``model_config.json`` records.
    Raises a ValueError saying to pass ``--tokenizer`` when there is none."""
    from sat.checkpoint import is_hf_directory
    from sat.tokenization import get_tokenizer

    if override is not None:
        check_exists(override)
        return get_tokenizer(tokenizer_type=override)
    if is_gguf(path):
        from transformers import AutoTokenizer

        folder, name = os.path.split(os.path.abspath(path))
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if is_hf_directory(path):
        return get_tokenizer(tokenizer_type=path)
    recorded = getattr(args, "tokenizer_type", "fake")
    if recorded.lower() == "fake":
        raise ValueError(f"{path} records no tokenizer (model_config.json has no tokenizer_type): pass --tokenizer")
    return get_tokenizer(args)
