"""The original's module path ``sat.tokenization.glm.tokenization``: every GLM tokenizer name."""

from sat.tokenization.glm.base import Tokenizer
from sat.tokenization.glm.chinese_sp import ChineseSPTokenizer
from sat.tokenization.glm.command_tokens import CommandToken, Tokenization
from sat.tokenization.glm.gpt2_bpe import GPT2BPETokenizer
from sat.tokenization.glm.wordpiece import BertWordPieceTokenizer

__all__ = [
    "BertWordPieceTokenizer",
    "ChineseSPTokenizer",
    "CommandToken",
    "GPT2BPETokenizer",
    "Tokenization",
    "Tokenizer",
]
