"""``sat reshard SRC DST --model-parallel-size N``: split or merge a sat checkpoint to N
model-parallel shards (``sat.tools.reshard``), one parameter at a time from memory-mapped files;
a tokenizer recorded inside SRC is copied along."""

from __future__ import annotations

import argparse

from sat.tools.cli.common import (
    add_command,
    add_import_option,
    add_source_and_target,
    copy_recorded_tokenizer,
    import_modules,
)
from sat.tools.cli.models import check_exists

EXAMPLE = """example:
  sat reshard ./llama-sat ./llama-sat-mp2 --model-parallel-size 2
"""


def register(subparsers) -> None:
    """Add ``reshard`` to ``subparsers``."""
    parser = add_command(
        subparsers, "reshard", run, "change a checkpoint's model-parallel size", __doc__ + "\n" + EXAMPLE
    )
    add_source_and_target(parser, "a sat checkpoint directory", "the directory to write")
    parser.add_argument("--model-parallel-size", type=int, required=True, help="the number of shards to write")
    parser.add_argument("--iteration", default=None, help="default: the one in 'latest'")
    parser.add_argument(
        "--checkpoint-format", choices=("pt", "safetensors"), default=None, help="default: the source's format"
    )
    parser.add_argument("--max-shard-size", default=None, help="safetensors: split files past this size ('2GB')")
    add_import_option(parser)


def run(options: argparse.Namespace) -> None:
    """Reshard ``options.source`` into ``options.target``."""
    from sat.tools.reshard import reshard_checkpoint

    import_modules(options.imports)
    check_exists(options.source)
    if options.model_parallel_size < 1:
        raise ValueError(f"--model-parallel-size={options.model_parallel_size} must be at least 1")
    kwargs = {"checkpoint_format": options.checkpoint_format}
    if options.max_shard_size is not None:
        kwargs["max_shard_size"] = options.max_shard_size
    reshard_checkpoint(options.source, options.target, options.model_parallel_size, options.iteration, **kwargs)
    copy_recorded_tokenizer(options.source, options.target)
    print(f"wrote {options.target} with model_parallel_size={options.model_parallel_size}")
