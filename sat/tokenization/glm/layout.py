"""The GLM command tokens' texts, and the run of them the tokenizers append after a vocabulary."""

from __future__ import annotations

from sat.tokenization.glm.command_tokens import CommandToken

TEXTS = {
    "pad": "<|endoftext|>",
    "eos": "<|endoftext|>",
    "sep": "[SEP]",
    "ENC": "[CLS]",
    "MASK": "[MASK]",
    "unk": "[UNK]",
    "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>",
    "gMASK": "[gMASK]",
    "sMASK": "[sMASK]",
    "dBLOCK": "[dBLOCK]",
}
# Masks swallow the space before them ("a [MASK]" encodes as "a", "[MASK]").
_LSTRIP = {"MASK", "gMASK", "sMASK"}


def command(name: str, Id: int, lstrip: bool = True) -> CommandToken:
    """The command token ``name`` with id ``Id`` (``lstrip=False``: no mask swallows spaces)."""
    return CommandToken(name, TEXTS[name], Id, lstrip=lstrip and name in _LSTRIP)


def task_and_decoder_masks(add_task_mask: bool, add_decoder_mask: bool) -> list[str]:
    """The command tokens after the block symbols: ``gMASK`` ``sMASK`` (task masks), ``dBLOCK``."""
    return (["gMASK", "sMASK"] if add_task_mask else []) + (["dBLOCK"] if add_decoder_mask else [])


def block_and_mask_tokens(names: list[str], first_id: int, lstrip: bool = True) -> list[CommandToken]:
    """The command tokens ``names`` with consecutive ids from ``first_id``."""
    return [command(name, first_id + offset, lstrip) for offset, name in enumerate(names)]
