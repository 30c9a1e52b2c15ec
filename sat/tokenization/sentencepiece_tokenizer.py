"""``SentencePieceTokenizer``: a sentencepiece ``.model`` file behind a small tokenizer API."""

from __future__ import annotations

from collections.abc import Iterable


class SentencePieceTokenizer:
    """Encode and decode with the sentencepiece model in ``model_file``."""

    def __init__(self, model_file: str):
        import sentencepiece

        self.model_file = model_file
        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token_id(self) -> int:
        return self.processor.bos_id()  # -1 when the model defines none

    @property
    def eos_token_id(self) -> int:
        return self.processor.eos_id()

    def tokenize(self, text: str) -> list[str]:
        return self.processor.encode(text, out_type=str)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode([int(i) for i in ids])
