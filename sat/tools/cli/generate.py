"""``sat generate PATH --prompt TEXT``: continue a prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse

from sat.tools.cli.common import add_command, write_stdout
from sat.tools.cli.sampling import add_generation_options, generate_text, load_for_generation

EXAMPLE = """example:
  sat generate smollm2-sat --prompt "The capital of France is" --max-new-tokens 20
"""


def register(subparsers) -> None:
    """Add ``generate`` to ``subparsers``."""
    parser = add_command(subparsers, "generate", run, "continue a prompt, streaming the text", __doc__ + "\n" + EXAMPLE)
    parser.add_argument("--prompt", required=True, help="the text to continue")
    add_generation_options(parser, max_new_tokens=64)


def run(options: argparse.Namespace) -> None:
    """Load, encode the prompt, generate, print."""
    model, tokenizer = load_for_generation(options)
    prompt_ids = tokenizer.encode(options.prompt)
    if not prompt_ids:
        raise ValueError(f"--prompt {options.prompt!r} encodes to no tokens")

    generate_text(model, tokenizer, prompt_ids, options, write_stdout)
    write_stdout("\n")
