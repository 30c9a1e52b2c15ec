"""Generation options shared by ``sat generate`` and ``sat chat``, and the streaming loop.

Greedy decoding (the default) is ``--temperature 0`` or ``--top-k 1``: the most likely token
every step, as ``BaseStrategy(top_k=1)`` chooses it. A positive temperature samples, among the
``--top-k`` most likely tokens (0: all) and the ``--top-p`` nucleus (0: no limit).
``--num-beams N > 1`` runs beam search and prints the best beam at the end: classic (deterministic)
beam search when greedy, candidates sampled with the temperature, top-k and top-p otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def add_sampling_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """``--max-new-tokens``, ``--temperature``, ``--top-k``, ``--top-p``, ``--num-beams``, ``--seed``."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    parser.add_argument(
        "--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all; 1: greedy)"
    )
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass (0: no limit)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: none)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")


def add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """What ``generate`` and ``chat`` take: the model's path, the sampling and the model options."""
    from sat.tools.cli.common import add_import_option
    from sat.tools.cli.models import add_model_options

    parser.add_argument("path", help="a sat checkpoint directory, a transformers model directory or a .gguf file")
    add_sampling_options(parser, max_new_tokens)
    add_model_options(parser, dtype_help="compute in this dtype (float32, bfloat16/bf16, float16/fp16, auto)")
    add_import_option(parser)


def load_for_generation(options: argparse.Namespace):
    """``(model, tokenizer)`` for ``generate`` and ``chat``, after checking the sampling options."""
    from sat.tools.cli.common import import_modules
    from sat.tools.cli.models import load_model, load_tokenizer

    check_sampling_options(options)
    import_modules(options.imports)
    model, args = load_model(
        options.path, dtype=options.dtype, device_map=options.device_map, offload_folder=options.offload_folder
    )
    return model, load_tokenizer(options.path, args, options.tokenizer)


def check_sampling_options(options: argparse.Namespace) -> None:
    """A ValueError naming the flag whose value cannot work."""
    checks = (
        ("--max-new-tokens", options.max_new_tokens >= 1, "at least 1"),
        ("--temperature", options.temperature >= 0, "0 or more"),
        ("--top-k", options.top_k >= 0, "0 or more"),
        ("--top-p", 0 <= options.top_p <= 1, "between 0 and 1"),
        ("--num-beams", options.num_beams >= 1, "at least 1"),
    )
    for flag, ok, expected in checks:
        if not ok:
            raise ValueError(f"{flag}={getattr(options, flag[2:].replace('-', '_'))} must be {expected}")


def is_greedy(options: argparse.Namespace) -> bool:
    """Greedy decoding: ``--temperature 0`` or ``--top-k 1``."""
    return options.temperature == 0 or options.top_k == 1


def make_strategy(options: argparse.Namespace, end_tokens: list[int]):
    """The ``BaseStrategy`` or ``BeamSearchStrategy`` the options describe."""
    from sat.generation import BaseStrategy, BeamSearchStrategy

    temperature = options.temperature if options.temperature > 0 else 1.0
    top_k = 1 if is_greedy(options) else options.top_k
    if options.num_beams > 1 and is_greedy(options):  # classic beam search: transformers' do_sample=False
        return BeamSearchStrategy(options.num_beams, end_tokens=end_tokens, deterministic=True)
    if options.num_beams > 1:  # candidates sampled, ranked by log-probability (the original's default)
        return BeamSearchStrategy(
            options.num_beams, temperature=temperature, top_k=options.top_k, top_p=options.top_p, end_tokens=end_tokens
        )
    return BaseStrategy(temperature=temperature, top_k=top_k, top_p=options.top_p, end_tokens=end_tokens)


def end_tokens_of(tokenizer) -> list[int]:
    """The ids that end generation: the tokenizer's end-of-sequence token, if it has one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else []


def generate_text(
    model: torch.nn.Module, tokenizer, prompt_ids: list[int], options: argparse.Namespace, write: Callable[[str], None]
) -> list[int]:
    """Generate after ``prompt_ids`` and pass the text to ``write`` as it grows (once at the end
    with beam search). Returns the new token ids, without the end token."""
    import torch

    from sat.generation import filling_sequence, stream_filling_sequence
    from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin

    if options.seed is not None:
        torch.manual_seed(options.seed)
    device = next(model.parameters()).device
    prompt = torch.tensor(prompt_ids, dtype=torch.long, device=device)  # [s]
    seq = torch.cat((prompt, torch.full((options.max_new_tokens,), -1, device=device)))  # [s + new]
    end_tokens = end_tokens_of(tokenizer)
    strategy = make_strategy(options, end_tokens)
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    try:
        if options.num_beams > 1:
            beams, _ = filling_sequence(model, seq, 1, strategy)
            new = _until_end(beams[0][len(prompt_ids) :].tolist(), end_tokens)
            write(tokenizer.decode(new, skip_special_tokens=True))
            return new
        shown, new = "", []
        for tokens, _ in stream_filling_sequence(model, seq, 1, strategy):
            new = _until_end(tokens[0, len(prompt_ids) :].tolist(), end_tokens)
            # Decode everything so far: a character may span tokens; print only what is new and final.
            text = tokenizer.decode(new, skip_special_tokens=True)
            if not text.endswith("\ufffd") and text.startswith(shown):
                write(text[len(shown) :])
                shown = text
        text = tokenizer.decode(new, skip_special_tokens=True)
        write(text[len(shown) :] if text.startswith(shown) else text)
        return new
    finally:
        model.del_mixin("auto-regressive")


def _until_end(ids: list[int], end_tokens: list[int]) -> list[int]:
    """``ids`` up to (without) the first end token."""
    for i, token in enumerate(ids):
        if token in end_tokens:
            return ids[:i]
    return ids
