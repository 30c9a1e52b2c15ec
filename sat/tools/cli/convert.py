"""``sat convert SRC DST``: a ``transformers`` directory (or GGUF file) to a sat checkpoint, or a
sat checkpoint to a ``transformers`` directory, for every family ``sat.hf`` knows.

The sat checkpoint is written as ``save_checkpoint`` writes one (``model_config.json``,
``latest``, ``1/mp_rank_XX_model_states.pt``), with the source's tokenizer saved in its
``tokenizer/`` folder and recorded in ``model_config.json``; ``--model-parallel-size N`` splits
it into N shards (``sat.tools.reshard``). The ``transformers`` directory gets the tokenizer the
checkpoint records.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from sat.tools.cli.common import (
    add_command,
    add_import_option,
    add_source_and_target,
    copy_recorded_tokenizer,
    import_modules,
)
from sat.tools.cli.models import check_exists, is_gguf, load_model, load_tokenizer

EXAMPLE = """examples:
  sat convert ./hf-llama ./llama-sat --dtype bf16               # transformers -> sat (--to inferred)
  sat convert ./llama-sat ./llama-hf --max-shard-size 2GB       # sat -> transformers
  sat convert ./hf-llama ./llama-sat-mp2 --model-parallel-size 2
"""
TOKENIZER_FOLDER = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def register(subparsers) -> None:
    """Add ``convert`` to ``subparsers``."""
    parser = add_command(
        subparsers, "convert", run, "transformers <-> sat checkpoint conversion", __doc__ + "\n" + EXAMPLE
    )
    add_source_and_target(
        parser,
        "a transformers model directory, a .gguf file, or a sat checkpoint directory",
        "the directory to write (must not exist or be empty)",
    )
    parser.add_argument("--to", choices=("hf", "sat"), default=None, help="default: the other format than SRC's")
    parser.add_argument(
        "--dtype", default=None, help="write the weights in this dtype (float32, bfloat16/bf16, float16/fp16, auto)"
    )
    parser.add_argument(
        "--max-shard-size", default=None, help="split weight files past this size ('2GB', '500MB', or bytes)"
    )
    parser.add_argument(
        "--model-parallel-size", type=int, default=1, help="--to sat: write N model-parallel shards (default 1)"
    )
    parser.add_argument(
        "--checkpoint-format", choices=("pt", "safetensors"), default=None, help="--to sat: the weight files' format"
    )
    add_import_option(parser)


def target_format(source: str, requested: str | None) -> str:
    """``"sat"`` or ``"hf"``: ``requested``, else the other format than ``source``'s; a
    ValueError when ``source`` already is the requested format or neither."""
    from sat.checkpoint import MODEL_CONFIG, is_hf_directory

    if is_gguf(source) or is_hf_directory(source):
        kind = "sat"
    elif os.path.isfile(os.path.join(source, MODEL_CONFIG)):
        kind = "hf"
    else:
        raise ValueError(
            f"{source} is neither a transformers directory (config.json with a model_type), a .gguf file, nor a sat "
            f"checkpoint ({MODEL_CONFIG})"
        )
    if requested is not None and requested != kind:
        other = "sat reshard (another model-parallel size)" if requested == "sat" else "sat convert --to sat"
        raise ValueError(f"{source} is already in the {requested} format: nothing to convert (see {other})")
    return kind


def run(options: argparse.Namespace) -> None:
    """Convert ``options.source`` to ``options.target``."""
    import_modules(options.imports)
    check_exists(options.source)
    kind = target_format(options.source, options.to)
    if os.path.exists(options.target) and (not os.path.isdir(options.target) or os.listdir(options.target)):
        raise FileExistsError(f"{options.target} exists and is not an empty directory: choose a new target")
    if options.model_parallel_size < 1:
        raise ValueError(f"--model-parallel-size={options.model_parallel_size} must be at least 1")
    if kind == "hf" and (options.model_parallel_size != 1 or options.checkpoint_format):
        raise ValueError("--model-parallel-size and --checkpoint-format apply to --to sat only")
    model, args = load_model(options.source, dtype=options.dtype)
    if kind == "sat":
        to_sat(model, args, options)
    else:
        to_hf(model, args, options)
    print(f"wrote {options.target} ({type(model).__name__}, {kind})")


def _has_tokenizer(source: str) -> bool:
    return is_gguf(source) or any(os.path.isfile(os.path.join(source, name)) for name in TOKENIZER_FILES)


def to_sat(model, args: argparse.Namespace, options: argparse.Namespace) -> None:
    """Save ``model`` (translated from ``options.source``) as a sat checkpoint in ``options.target``."""
    from sat.checkpoint import save_module_checkpoint
    from sat.tools.reshard import reshard_checkpoint

    for name in ("checkpoint_format", "max_shard_size"):
        if getattr(options, name) is not None:
            setattr(args, name, getattr(options, name))
    parent = os.path.dirname(os.path.abspath(options.target))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".sat-convert-") as staging:
        # Model-parallel shards come from resharding the one-process checkpoint.
        folder = options.target if options.model_parallel_size == 1 else staging
        os.makedirs(folder, exist_ok=True)
        if _has_tokenizer(options.source):
            tokenizer_dir = os.path.join(folder, TOKENIZER_FOLDER)
            load_tokenizer(options.source, args).save_pretrained(tokenizer_dir)
            args.tokenizer_type = tokenizer_dir  # model_config.json records it relative to the checkpoint
        args.save = folder
        save_module_checkpoint(1, model, args)
        if options.model_parallel_size > 1:
            reshard_kwargs = {"checkpoint_format": options.checkpoint_format}
            if options.max_shard_size is not None:
                reshard_kwargs["max_shard_size"] = options.max_shard_size
            reshard_checkpoint(staging, options.target, options.model_parallel_size, **reshard_kwargs)
            copy_recorded_tokenizer(staging, options.target)


def to_hf(model, args: argparse.Namespace, options: argparse.Namespace) -> None:
    """Save ``model`` (loaded from the sat checkpoint ``options.source``) as a ``transformers``
    directory in ``options.target``, with the tokenizer the checkpoint records."""
    from sat.hf import save_hf

    kwargs = {} if options.max_shard_size is None else {"max_shard_size": options.max_shard_size}
    save_hf(model, options.target, **kwargs)
    if getattr(args, "tokenizer_type", "fake").lower() != "fake":
        tokenizer = load_tokenizer(options.source, args)
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(options.target)
