"""``sat chat PATH``: talk to a model, one line of stdin per turn, keeping the conversation.

Each turn is the whole history in the tokenizer's chat template (``apply_chat_template``), or,
for a tokenizer without one, as ``User: ...`` / ``Assistant: ...`` lines. ``/reset`` forgets
the history; ``/exit`` or the end of input stops.
"""

from __future__ import annotations

import argparse
import sys

from sat.tools.cli.common import add_command, write_stdout
from sat.tools.cli.sampling import add_generation_options, generate_text, load_for_generation

EXAMPLE = """example:
  printf 'What is the capital of France?\\nAnd of Italy?\\n' | sat chat smollm2-sat
"""


def register(subparsers) -> None:
    """Add ``chat`` to ``subparsers``."""
    parser = add_command(subparsers, "chat", run, "chat with a model on stdin/stdout", __doc__ + "\n" + EXAMPLE)
    parser.add_argument("--system", default=None, help="a system message to start the conversation with")
    add_generation_options(parser, max_new_tokens=256)


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of ``messages`` ready for the assistant's next answer."""
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    lines = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return tokenizer.encode("\n".join([*lines, "Assistant:"]))


def run(options: argparse.Namespace) -> None:
    """Read turns until the input ends, answering each."""
    model, tokenizer = load_for_generation(options)
    start = [{"role": "system", "content": options.system}] if options.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()

    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        turn = line.strip()
        if not line or turn == "/exit":
            return
        if turn == "/reset":
            messages = list(start)
            continue
        if not turn:
            continue
        messages.append({"role": "user", "content": turn})
        answer = generate_text(model, tokenizer, conversation_ids(tokenizer, messages), options, write_stdout)
        write_stdout("\n")
        messages.append({"role": "assistant", "content": tokenizer.decode(answer, skip_special_tokens=True).strip()})
